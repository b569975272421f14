"""``voxgate loadtest``: real-time voice sessions against voxgate, over
WebSocket or WebRTC, with a fault mix of known ground truth, and an audit of
voxgate's recorded verdicts (see ``docs/loadtest.md``).

Public API: :class:`LoadtestConfig` and :func:`run_loadtest` (in
:mod:`voxgate.loadtest.runner`), :func:`parse_mix`, :func:`plan_sessions`
and :func:`ground_truth` (in :mod:`voxgate.loadtest.plan`), :class:`Clip`
(in :mod:`voxgate.loadtest.audio`).
"""

from voxgate.loadtest.audio import Clip
from voxgate.loadtest.plan import SessionPlan, ground_truth, parse_mix, plan_sessions
from voxgate.loadtest.runner import LoadtestConfig, run_loadtest

__all__ = ["Clip", "SessionPlan", "ground_truth", "parse_mix", "plan_sessions",
           "LoadtestConfig", "run_loadtest"]
