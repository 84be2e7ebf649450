"""Reconciliation with LiveKit: every room with something to enforce is compared, on the replica that
holds its partition and in the room's command order, with what LiveKit holds, and the differences are
repaired. LiveKit's webhooks are the fast path; this is the guarantee (docs/operations/reconciliation.md).
"""
