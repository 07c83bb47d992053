"""TrustGraph profiles: which generation of TrustGraph a flow talks to, and its default topics.

A *profile* names the TrustGraph generation whose processors read and write a flow's topics
(CONTRACT §8). It fixes three things: the Pulsar payload encoding (see `quiesce.core.convert`),
the kinds a flow has, and the default topic of each (flow, kind).

``tg1`` — TrustGraph 1.x (read from the tags v1.4.22 and v1.9.4, and the flow templates of
trustgraph-templates 1.4 and 1.9). A flow's data interfaces are fire-and-forget topics
``persistent://tg/flow/{interface}:{flow}``: the flow templates write them as
``flow("triples-store:{id}")`` with ``flow(x) = "persistent://tg/flow/" + x``, and TrustGraph's
flow service replaces ``{id}`` with the flow's name when the flow starts. The gateway maps a
kind to its interface as ``kind + "-store"``, except ``entity-contexts``, which is
``entity-contexts-load``. 1.x has the kind ``objects`` (``ExtractedObject`` records on
``objects-store``).

``tg2`` — TrustGraph 2.x from 2.4 on, which added workspaces (read from trustgraph-flow 2.11.1
and the flow templates 2.4 to 2.8). The templates write ``flow("triples-store:{workspace}:{id}")``
with ``flow(x) = "flow:tg:" + x``; the Pulsar backend maps the queue ``flow:tg:X`` to the topic
``persistent://tg/flow/X``, so the topic is ``persistent://tg/flow/{interface}:{workspace}:{flow}``.
The gateway's default workspace is ``default``. 2.x renamed ``objects`` to ``rows``
(``ExtractedObject`` records on ``rows-store``).

Pure: no I/O, nothing here talks to a broker.
"""

from __future__ import annotations

import enum
import re

from quiesce.core.errors import RouteError

__all__ = [
    "COMMON_KINDS",
    "DEFAULT_PROFILE",
    "DEFAULT_WORKSPACE",
    "INTERFACES",
    "Profile",
    "default_topic",
    "interface",
]

#: The kinds both generations have.
COMMON_KINDS: tuple[str, ...] = (
    "triples",
    "graph-embeddings",
    "document-embeddings",
    "entity-contexts",
)

#: TrustGraph's flow interface for each kind (the same name in 1.x and 2.x).
INTERFACES: dict[str, str] = {
    "triples": "triples-store",
    "graph-embeddings": "graph-embeddings-store",
    "document-embeddings": "document-embeddings-store",
    "entity-contexts": "entity-contexts-load",
    "objects": "objects-store",
    "rows": "rows-store",
}

#: The workspace TrustGraph 2.x's gateway uses when a request names none.
DEFAULT_WORKSPACE = "default"

# A workspace becomes part of a topic name: the same characters as a flow name, so that it can
# hold no ``/`` or ``:`` that would change which topic is meant.
_WORKSPACE_RE = re.compile("[A-Za-z0-9_.-]{1,64}")


class Profile(enum.StrEnum):
    """The TrustGraph generation of a deployment or flow (CONTRACT §8).

    The values are the names used in configuration (``profile = "tg2"``) and in the export
    query parameter ``?format=tg1|tg2``, where they name the wire format of that generation.
    """

    TG1 = "tg1"
    """TrustGraph 1.x: values ``{"value", "is_uri", "type"}``, users, flows without workspaces."""

    TG2 = "tg2"
    """TrustGraph 2.x (2.4 and later): RDF terms, workspaces, ``rows``."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds a flow of this profile has, in the order the contract lists them."""
        return _KINDS[self]

    @property
    def has_workspaces(self) -> bool:
        """Whether the profile's topic names include a workspace."""
        return self is Profile.TG2


_KINDS: dict[Profile, tuple[str, ...]] = {
    Profile.TG1: (*COMMON_KINDS, "objects"),
    Profile.TG2: (*COMMON_KINDS, "rows"),
}

#: CONTRACT §8: ``tg1`` unless configured otherwise.
DEFAULT_PROFILE = Profile.TG1


def interface(profile: Profile, kind: str) -> str:
    """TrustGraph's flow interface name for ``kind`` under ``profile``.

    Raises:
        RouteError: the profile has no such kind (``objects`` is 1.x only, ``rows`` 2.x only).
    """
    if kind not in _KINDS[profile]:
        raise RouteError(
            f"unknown kind {kind!r} for profile {profile.value}; "
            f"expected one of {', '.join(_KINDS[profile])}"
        )
    return INTERFACES[kind]


def default_topic(
    profile: Profile, flow: str, kind: str, workspace: str = DEFAULT_WORKSPACE
) -> str:
    """The topic TrustGraph itself uses for (flow, kind) under ``profile``.

    Args:
        profile: the flow's profile.
        flow: the flow's name (already checked against the flow-name pattern by the caller).
        kind: one of ``profile.kinds``.
        workspace: the 2.x workspace; ignored by ``tg1``, which has none.

    Returns:
        ``persistent://tg/flow/{interface}:{flow}`` (tg1) or
        ``persistent://tg/flow/{interface}:{workspace}:{flow}`` (tg2), e.g.
        ``persistent://tg/flow/triples-store:default`` for the flow ``default``.

    Raises:
        RouteError: unknown kind for the profile, or (tg2) a workspace that is not 1 to 64 of
            ``A-Z a-z 0-9 _ . -``.
    """
    name = interface(profile, kind)
    if profile is Profile.TG1:
        return f"persistent://tg/flow/{name}:{flow}"
    if not _WORKSPACE_RE.fullmatch(workspace):
        raise RouteError(f"invalid workspace {workspace!r}; expected [A-Za-z0-9_.-]{{1,64}}")
    return f"persistent://tg/flow/{name}:{workspace}:{flow}"
