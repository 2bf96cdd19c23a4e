"""The `[[sources]]` entries that point our real collectors at the simulator."""

from __future__ import annotations

from typing import Any

from feed.simulator.datasets import COUNTERS_DATASET, EVENTS_DATASET
from feed.simulator.events import EVENT_KINDS, SEVERITY_FR, STATUS_FR

__all__ = [
    "simulator_sources",
]


def simulator_sources(
    base_url: str, *, interval: int = 60, datex2: bool = False, api_key: str | None = None
) -> list[dict[str, Any]]:
    """`[[sources]]` entries that poll this simulator with our real collectors.

    Counters and events come through the Opendatasoft collector. With `datex2`, a
    DATEX II v3 source is added, disabled: it carries the same events as the
    Opendatasoft event source, so enable one or the other.
    """
    base = base_url.rstrip("/")
    extra = {"api_key": api_key} if api_key else {}
    sources: list[dict[str, Any]] = [
        {
            "id": "sim-comptages",
            "kind": "opendatasoft",
            "url": base,
            "interval": interval,
            "options": {
                "dataset": COUNTERS_DATASET,
                "dataset_type": "counters",
                "order_by_id": "id_canal",
                **extra,
                "mapping": {
                    "site_id": "id_site",
                    "time": "date_heure",
                    "count": "debit",
                    "direction": "sens",
                    "direction_name": "libelle_sens",
                    "vehicle_class": "categorie",
                    "vehicle_class_map": {"VL": "light", "PL": "heavy"},
                    "speed": "vitesse_moyenne",
                    "geo_point": "geo_point_2d",
                    "site_name": "nom_site",
                    "road": "route",
                    "interval_seconds": 3600,
                    "timezone": "Europe/Paris",
                    "site_metadata": ["commune", "insee", "pr", "abscisse"],
                },
            },
        },
        {
            "id": "sim-evenements",
            "kind": "opendatasoft",
            "url": base,
            "interval": interval,
            "options": {
                "dataset": EVENTS_DATASET,
                "dataset_type": "events",
                "order_by_id": "id",
                **extra,
                "mapping": {
                    "id": "id",
                    "type": "type",
                    "type_map": {label: kind for label, kind, _ in EVENT_KINDS.values()},
                    "start": "debut",
                    "end": "fin",
                    "road": "route",
                    "direction": "sens",
                    "geometry": "geo_shape",
                    "geo_point": "geo_point_2d",
                    "description": "description",
                    "description_language": "fr",
                    "severity": "gravite",
                    "severity_map": {fr: sev for sev, fr in SEVERITY_FR.items()},
                    "status": "statut",
                    "status_map": {fr: st for st, fr in STATUS_FR.items()},
                    "updated": "mise_a_jour",
                    "detour": "deviation",
                    "lanes": "voies",
                    "pr_from": "pr_debut",
                    "pr_to": "pr_fin",
                    "insee": "insee",
                    "timezone": "Europe/Paris",
                },
            },
        },
    ]
    if datex2:
        sources.append(
            {
                "id": "sim-datex2",
                "kind": "datex2",
                "url": f"{base}/datex2/v3/situations.xml",
                "interval": interval,
                "enabled": False,
                "options": {"snapshot": True},
            }
        )
    return sources
