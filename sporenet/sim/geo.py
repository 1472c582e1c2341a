"""Nodes on a world map: a small city table, placement around cities, distance to latency.

Latency model (one way): great-circle distance / (2/3 c, light in fibre) times a route
inflation factor (fibre does not follow great circles; ~1.5 is typical for the
Internet), plus a small fixed delay per hop for processing and queueing.

Invariant: every random draw comes from the ``rng`` passed in; no module state is
mutated. Same rng state, same places.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_S = 299_792.458 * 2.0 / 3.0
ROUTE_INFLATION = 1.5
HOP_DELAY_S = 0.0005


@dataclass(frozen=True, slots=True)
class City:
    name: str
    lat: float
    lon: float
    region: str  # "eu", "na", "sa", "asia", "oc", "af"
    weight: float  # relative share of nodes placed around it


CITIES: tuple[City, ...] = (
    City("london", 51.507, -0.128, "eu", 4.0),
    City("frankfurt", 50.110, 8.682, "eu", 4.0),
    City("amsterdam", 52.370, 4.895, "eu", 3.0),
    City("paris", 48.857, 2.352, "eu", 3.0),
    City("stockholm", 59.329, 18.069, "eu", 1.5),
    City("madrid", 40.417, -3.704, "eu", 1.5),
    City("warsaw", 52.230, 21.012, "eu", 1.5),
    City("new_york", 40.713, -74.006, "na", 4.0),
    City("ashburn", 39.044, -77.487, "na", 3.0),
    City("chicago", 41.878, -87.630, "na", 2.0),
    City("dallas", 32.777, -96.797, "na", 2.0),
    City("san_francisco", 37.775, -122.419, "na", 3.0),
    City("seattle", 47.606, -122.332, "na", 1.5),
    City("toronto", 43.653, -79.383, "na", 1.5),
    City("sao_paulo", -23.551, -46.633, "sa", 2.0),
    City("buenos_aires", -34.604, -58.382, "sa", 1.0),
    City("tokyo", 35.676, 139.650, "asia", 3.0),
    City("singapore", 1.352, 103.820, "asia", 2.5),
    City("hong_kong", 22.320, 114.169, "asia", 2.0),
    City("seoul", 37.567, 126.978, "asia", 1.5),
    City("mumbai", 19.076, 72.878, "asia", 2.0),
    City("sydney", -33.869, 151.209, "oc", 1.5),
    City("johannesburg", -26.204, 28.047, "af", 1.0),
    City("lagos", 6.524, 3.379, "af", 1.0),
)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def latency_for_km(km: float, *, inflation: float = ROUTE_INFLATION,
                   hop_delay: float = HOP_DELAY_S) -> float:
    """One-way latency in seconds over ``km`` of great-circle distance."""
    return km / FIBRE_KM_PER_S * inflation + hop_delay


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    """A point on the unit sphere; chord length orders pairs as great-circle distance does."""
    p, l = math.radians(lat), math.radians(lon)
    return (math.cos(p) * math.cos(l), math.cos(p) * math.sin(l), math.sin(p))


def place_nodes(n: int, rng: random.Random, *, cities: tuple[City, ...] = CITIES,
                spread_km: float = 150.0) -> list[tuple[float, float, str, str]]:
    """``n`` (lat, lon, region, city) around cities chosen by weight, Gaussian offsets."""
    weights = [c.weight for c in cities]
    out = []
    for _ in range(n):
        city = rng.choices(cities, weights)[0]
        lat = max(-89.9, min(89.9, city.lat + rng.gauss(0.0, spread_km) / 111.2))
        dlon = rng.gauss(0.0, spread_km) / (111.2 * max(0.05, math.cos(math.radians(lat))))
        lon = (city.lon + dlon + 180.0) % 360.0 - 180.0
        out.append((lat, lon, city.region, city.name))
    return out
