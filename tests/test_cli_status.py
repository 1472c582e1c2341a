"""`sporenet status`'s TUN line: what a user reads to see the data path work or drop."""

from sporenet.commands.status import datapath_line


def test_the_tun_line_shows_traffic_and_drops_by_reason():
    line = datapath_line({"tun": True, "device": "sporenet0", "mtu": 1420, "offload": True,
                          "counters": {"packets_out": 1200, "packets_in": 1100, "forwarded": 7,
                                       "bytes_out": 9, "no_route": 3, "malformed": 1,
                                       "replay": 0}})
    assert line == ("sporenet0 mtu 1420, offload: 1,200 out, 1,100 in, 7 forwarded; "
                    "dropped: malformed 1, no_route 3")


def test_the_tun_line_without_drops_without_a_tun_and_from_an_older_node():
    assert datapath_line({"tun": True, "device": "sn0", "mtu": 1280, "offload": False,
                          "counters": {}}).endswith("0 forwarded; no drops")
    assert datapath_line({"tun": False, "device": None, "counters": {}}) == "off (--no-tun)"
    assert datapath_line({"tun": False, "device": None,
                          "counters": {"no_tun": 4}}) == "off (--no-tun); dropped: no_tun 4"
    assert datapath_line(None) is None
