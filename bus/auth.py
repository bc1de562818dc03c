"""Who may do what on NATS: one identity per kind of process, permissions derived from the prefix.

One account, per-user permissions. Every stream, the KV buckets and the JetStream API of a
namespace live in one account, and each user's ``publish``/``subscribe`` permissions name exactly
the subjects and ``$JS.API`` calls its processes make. Several accounts would need an export and
an import per stream, per API call and per reply subject to share the same streams; per-user
permissions express the same matrix in one place and keep ``nats`` CLI use unchanged.

Identities (user names): ``feed`` publishes market data and news (nothing else, reads no streams
but its own), ``handler`` (handlers and the notifier) consumes and publishes derived events
(bars, intel, decisions, risk, ops, order intents/approvals), ``projector`` consumes and answers
queries, ``execution`` is the only identity that may publish broker order events
(``<prefix>.order.{submitted,accepted,rejected,filled,cancelled}``, see :data:`ORDER_EVENTS`),
``reader`` (downstream decision consumers) reads decisions and the decisions KV only,
``operator`` inspects everything (status, query, replay, verify, backup) and changes nothing,
``admin`` manages streams (provision, restore, purge, delete) and may subscribe to ``>``, but
publishes no orders either. Each user gets a private inbox ``_INBOX_<user>.>`` (the client sets
nats-py's ``inbox_prefix``), so nobody reads another's replies.

Passwords come only from the environment, ``TAPELINE_NATS_PASSWORD_<IDENTITY>``; an embedded
server writes them into its 0600 config file, the committed ``deploy/nats-auth.conf`` refers to
the same variables (nats-server resolves ``$VAR`` from its environment).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from tapeline.bus.components import snapshots_bucket
from tapeline.bus.lease import leases_bucket
from tapeline.schemas.subjects import DECISION, FAMILIES, MD, decisions_bucket

IDENTITIES = ("feed", "handler", "projector", "execution", "reader", "operator", "admin")
PASSWORD_ENV = "TAPELINE_NATS_PASSWORD_{}"
ORDER_EVENTS = ("submitted", "accepted", "rejected", "filled", "cancelled")  # what only execution publishes
# which identity a `tapeline up --only ROLE` process connects as
ROLE_IDENTITY = {
    "handlers": "handler",
    "intel": "handler",
    "risk": "handler",
    "portfolio": "handler",
    "notifier": "handler",
    "news": "handler",  # the news feed runs as a component in `up`: it needs the component runner's state KV
    "execution": "execution",
    "projector": "projector",
    "vectors": "projector",
}


class IdentityError(ValueError):
    """A process would need two NATS identities at once."""


def identity_for(roles: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The identity a ``tapeline up --only ROLES`` process connects as.

    Roles of different identities (the default: all of them) cannot share one connection when
    their passwords are set and no explicit ``TAPELINE_NATS_USER`` says who connects.
    """
    env = os.environ if env is None else env
    ids = sorted({ROLE_IDENTITY.get(r, "handler") for r in roles})
    if len(ids) == 1:
        return ids[0]
    configured = [i for i in ids if env.get(PASSWORD_ENV.format(i.upper()))]
    if configured and not env.get("TAPELINE_NATS_USER"):
        raise IdentityError(
            f"roles {', '.join(roles)} connect as different NATS identities ({', '.join(ids)}): run one "
            "`tapeline up --only ROLE` per identity, or set TAPELINE_NATS_USER/_PASSWORD for a single user"
        )
    return ""


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def _bucket_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def namespace_streams(prefix: str) -> list[str]:
    """Every stream of a namespace: the families and the KV buckets (decisions, leases, snapshots)."""
    buckets = [decisions_bucket(prefix), leases_bucket(prefix), snapshots_bucket(prefix)]
    return [f.stream(prefix) for f in FAMILIES] + [_bucket_stream(b) for b in buckets]


def _consume(streams: list[str]) -> list[str]:
    """The API a pull consumer (ours or nats-py's) and a stream reader use on ``streams``."""
    out: list[str] = []
    for s in streams:
        out += [
            f"$JS.API.STREAM.INFO.{s}",
            f"$JS.API.STREAM.MSG.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}.>",
            f"$JS.API.CONSUMER.CREATE.{s}",
            f"$JS.API.CONSUMER.CREATE.{s}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.*",
            f"$JS.API.CONSUMER.INFO.{s}.*",
            f"$JS.API.CONSUMER.DELETE.{s}.*",
            f"$JS.API.CONSUMER.NAMES.{s}",
            f"$JS.API.CONSUMER.MSG.NEXT.{s}.*",
            f"$JS.ACK.{s}.>",
            f"$JS.FC.{s}.>",
        ]
    return out


def permissions(identity: str, prefix: str) -> dict[str, object]:
    """The nats-server ``permissions`` block of ``identity`` in the namespace ``prefix``."""
    p = prefix
    streams = namespace_streams(p)
    state_kv = [f"$KV.{leases_bucket(p)}.>", f"$KV.{snapshots_bucket(p)}.>"]  # leases and component snapshots
    base_pub = ["$JS.API.INFO", *(f"$JS.API.STREAM.INFO.{s}" for s in streams)]
    inbox = [f"{inbox_prefix(identity)}.>"]
    worker = base_pub + _consume(streams) + state_kv
    pub: list[str]
    sub: list[str] = inbox
    deny_pub: list[str] = []
    extra: dict[str, object] = {}
    if identity == "feed":
        md = MD.stream(p)
        pub = [*base_pub, f"{p}.md.>", f"{p}.news.>", f"{p}.ops.heartbeat.>", f"{p}.ops.alert.>"]
        pub += [f"$JS.API.STREAM.MSG.GET.{md}", f"$JS.API.DIRECT.GET.{md}", f"$JS.API.DIRECT.GET.{md}.>"]
    elif identity == "handler":
        pub = worker + [f"{p}.{s}.>" for s in ("md.bar", "news", "intel", "decision", "risk", "ops")]
        pub += [f"{p}.order.intent.>", f"{p}.order.approved.>"]
    elif identity == "projector":
        pub = [*worker, f"{p}.ops.>", f"$KV.{decisions_bucket(p)}.>"]  # the per-(ticker, date) decision keys
        sub = [*inbox, f"{p}.svc.query", f"{p}.svc.swap"]
        extra = {"allow_responses": True}
    elif identity == "execution":
        pub = [*worker, f"{p}.order.>", f"{p}.ops.>"]
    elif identity == "reader":
        read = [DECISION.stream(p), _bucket_stream(decisions_bucket(p))]
        pub = ["$JS.API.INFO", *_consume(read)]
        pub = [s for s in pub if ".CONSUMER.DURABLE." not in s]  # ephemeral (ordered) consumers only
        sub = [*inbox, f"{p}.decision.>"]
    elif identity == "operator":
        pub = [*worker, "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", f"{p}.svc.query", f"{p}.svc.swap"]
        # control: halt/resume, model deploy/rollback, a manual rebalance and its intents, operator notes
        pub += [f"{p}.risk.>", f"{p}.intel.model.>", f"{p}.order.intent.>", f"{p}.ops.>"]
        pub += [f"$JS.API.STREAM.SNAPSHOT.{s}" for s in streams] + [f"$JS.SNAPSHOT.ACK.{s}.>" for s in streams]
        sub = [*inbox, f"{p}.>"]
    elif identity == "admin":
        pub, sub = [">"], [">"]
    else:
        raise ValueError(f"unknown NATS identity {identity!r}: one of {', '.join(IDENTITIES)}")
    if identity != "execution":
        deny_pub += [f"{p}.order.{e}.>" for e in ORDER_EVENTS]
    publish: dict[str, object] = {"allow": pub}
    if deny_pub:
        publish["deny"] = deny_pub
    return {"publish": publish, "subscribe": {"allow": sub}, **extra}


def passwords_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{identity: password}`` for every ``TAPELINE_NATS_PASSWORD_<IDENTITY>`` set (empty: auth off)."""
    env = os.environ if env is None else env
    return {i: env[PASSWORD_ENV.format(i.upper())] for i in IDENTITIES if env.get(PASSWORD_ENV.format(i.upper()))}


def authorization_config(prefix: str, passwords: Mapping[str, str]) -> str:
    """An ``authorization`` block with the given users (nats-server config is a JSON superset).

    A password value starting with ``$`` is written bare, as a reference nats-server resolves from
    its environment (the committed deploy file); any other is a quoted literal (the embedded server's
    private config file).
    """
    users = []
    for identity, password in passwords.items():
        pw = password if password.startswith("$") else json.dumps(password)
        perms = json.dumps(permissions(identity, prefix), indent=2).replace("\n", "\n    ")
        users.append(f'  {{\n    user: "{identity}"\n    password: {pw}\n    permissions: {perms}\n  }}')
    return "authorization {\n users: [\n" + ",\n".join(users) + "\n ]\n}\n"


def deploy_config(prefix: str = "tape") -> str:
    """``deploy/nats-auth.conf``: every identity, passwords as environment references."""
    head = (
        "# Generated by `tapeline auth-config` for prefix "
        f"{prefix!r}: one account, one user per identity (bus/auth.py says why).\n"
        "# Passwords come from nats-server's environment: TAPELINE_NATS_PASSWORD_<IDENTITY>.\n"
    )
    refs = {i: "$" + PASSWORD_ENV.format(i.upper()) for i in IDENTITIES}
    return head + authorization_config(prefix, refs)
