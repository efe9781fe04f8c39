"""The backend named by ``ha.backend``, built from the one configuration.

Backends with third-party clients are imported only when chosen, so a single node on
the local backend never loads gRPC.
"""

from __future__ import annotations

from mxrc.config import Config
from mxrc.ha.backend import HaBackend
from mxrc.ha.lease import LeaseTerms
from mxrc.ha.local import LocalBackend
from mxrc.ha.members import parse_members


def lease_terms(config: Config) -> LeaseTerms:
    return LeaseTerms(
        float(config["ha.lease_ttl_s"]),
        float(config["ha.renew_interval_s"]),
        float(config["ha.safety_margin_s"]),
    )


def make_backend(config: Config) -> HaBackend:
    terms = lease_terms(config)
    name = str(config["ha.backend"])
    timeout_s = float(config["ha.request_timeout_s"])
    if name == "etcd":
        from mxrc.ha.etcd import EtcdBackend  # noqa: PLC0415 - gRPC only when chosen

        return EtcdBackend(
            config.node_id,
            list(config["ha.etcd_endpoints"]),
            f"{str(config['ha.etcd_prefix']).rstrip('/')}/{config['ha.cell']}/leader",
            terms,
            timeout_s,
        )
    if name == "peers":
        from mxrc.ha.peers import PeersBackend  # noqa: PLC0415 - loaded only when chosen

        return PeersBackend(
            config.node_id,
            parse_members(config["ha.members"]),
            terms,
            config.data_dir / "ha",
            timeout_s,
        )
    return LocalBackend(config.node_id, config.data_dir / "ha", terms)
