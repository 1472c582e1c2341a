#!/usr/bin/env bash
# sporenet, for the peer harness (../shared/bench/peers, README "Adapter contract"): copy
# this file into the harness's overlays/ and run `./run.sh raw wireguard-go yggdrasil
# sporenet` (bench/throughput does both). Each node is `sporenet up` with its TUN on
# (IFF_VNET_HDR superpackets, MTU SPORENET_MTU, default 1420), linked over the underlay by
# the TCP carrier (SPORENET_CARRIER=udp for the UDP one), end-to-end sessions per pair.
# 3-host: a and b each link only to r; r's router forwards their ciphertext unopened.
NAME=${SPORENET_NAME:-sporenet}
. "$(dirname "$0")/lib.sh"
TOPOLOGIES="2 3"
PORT=7000
CARRIER=${SPORENET_CARRIER:-tcp}
MTU=${SPORENET_MTU:-1420}
# the python that has sporenet installed (bench/throughput passes its own)
PY=${SPORENET_PYTHON:-python3}

do_info() {
  echo "sporenet $($PY -P -m sporenet.cli --version | awk '{print $NF}'), $CARRIER carrier," \
       "X25519+ML-KEM-768 sessions, ChaCha20-Poly1305 per superpacket, TUN MTU $MTU," \
       "3-host: native forwarding via pb-r"
}
do_install() {
  "$PY" -c 'import sporenet' 2>/dev/null && return 0
  "$PY" -m pip install -q "${SPORENET_SRC:?sporenet is not importable by $PY: set SPORENET_SRC to a checkout}"
}

do_prepare() {
  local n
  for n in $NODES; do
    [[ -f "$W/$n.key" ]] || "$PY" -P -m sporenet.cli keygen --key-file "$W/$n.key" >/dev/null
    "$PY" -P -m sporenet.cli keygen --show --json --key-file "$W/$n.key" \
      | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["address"])' >"$W/$n.addr"
  done
  if [[ $TOPO == 2 ]]; then
    echo "--listen $CARRIER://$B_IP:$PORT" >"$W/b.args"
    echo "--peer $CARRIER://$B_IP:$PORT" >"$W/a.args"
  else
    echo "--listen $CARRIER://$RA_IP:$PORT --listen $CARRIER://$RB_IP:$PORT" >"$W/r.args"
    echo "--peer $CARRIER://$RA_IP:$PORT" >"$W/a.args"
    echo "--peer $CARRIER://$RB_IP:$PORT" >"$W/b.args"
  fi
}

do_up() {
  local n
  for n in $START_ORDER; do
    # shellcheck disable=SC2046
    start_bg "$n" "sporenet-$n" "$PY" -P -m sporenet.cli up --key-file "$W/$n.key" \
      --run-dir "$W/run-$n" --api 127.0.0.1:8990 --name "$n" --tun-device "sn-$n" \
      --tun-mtu "$MTU" $(cat "$W/$n.args")
    if [[ $n == "$HUB" ]]; then wait_listen "$n" "$CARRIER" $PORT; fi
  done
  cat "$W/b.addr"
}

do_down() { stop_pids; }
dispatch "$@"
