"""A selector's matchActions -> its ``gen_selector`` action fields: what the event reports, Post (rate limit,
stack traces) or NoPost, Sigkill/Signal, Override, TrackSock/UntrackSock, NotifyEnforcer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lanner.policy.model import Selector
from lanner.policy.names import ACTION_NUMBERS

from .abi import (
    GA_SOCK, GA_SOCKET, GSF_KSTACK, GSF_OVERRIDE, GSF_POST, GSF_SIGNAL, GSF_TRACKSOCK, GSF_UNTRACKSOCK, GSF_USTACK,
)
from .compile_ctx import HookArgs, HookShape, SelectorScope
from .plan import Unavailable


@dataclass
class ActionState:
    """What a selector's actions add up to."""

    post: bool = True
    reported: int | None = None  # the Tetragon action number the event reports
    sig: int = 0
    rate: int = 0  # rateLimit, ns
    override: bool = False
    track: int = 0  # GSF_TRACKSOCK / GSF_UNTRACKSOCK
    stack: int = 0  # GSF_KSTACK / GSF_USTACK of a Post

    def report(self, action: str) -> None:
        self.reported = self.reported or ACTION_NUMBERS[action]


Handler = Callable[[SelectorScope, Any, ActionState, HookArgs, HookShape], None]


def selector_actions(s: SelectorScope, sel: Selector, args: HookArgs, shape: HookShape, flags: int) -> None:
    """Every matchActions entry in order, then the selector's action, flags, signal and rate limit."""
    st = ActionState()
    for a in sel.match_actions:
        if a.ima_hash:
            raise Unavailable(f"{s.where}: {a.action} imaHash is not served by this build (it needs the IMA "
                              "hash helpers in a sleepable LSM program)")
        handler = HANDLERS.get(a.action, _unserved)
        if a.action == "Override" and shape.override_via is None:
            handler = _unsupported_override
        handler(s, a, st, args, shape)
    if st.reported is None:
        st.reported = ACTION_NUMBERS["Post"] if st.post else ACTION_NUMBERS["NoPost"]
    p = s.prefix
    s.cfg[f"{p}action"] = st.reported
    s.cfg[f"{p}flags"] = flags | (GSF_POST if st.post else 0) | (GSF_SIGNAL if st.sig else 0) | \
        (GSF_OVERRIDE if st.override else 0) | st.track | (st.stack if st.post else 0)
    s.cfg[f"{p}signal"] = st.sig
    s.cfg[f"{p}rate_limit_ns"] = st.rate


def _post(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    # stack traces: where the hook's event has the field (else ignored, as Tetragon does); rateLimitScope: the
    # args hash is per hook+selector (global) in this build
    st.stack = ((GSF_KSTACK if a.kernel_stack_trace else 0) | (GSF_USTACK if a.user_stack_trace else 0)) & shape.stacks
    st.rate = (a.rate_limit_seconds or 0) * 1_000_000_000


def _nopost(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    st.post = False


def _signal(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    if not s.ctx.supports("send_signal"):
        raise Unavailable(f"{s.where}: {a.action} needs bpf_send_signal, which this kernel lacks")
    st.sig = 9 if a.action == "Sigkill" else (a.arg_sig or 0)
    if not 0 < st.sig < 65:
        raise Unavailable(f"{s.where}: Signal needs argSig 1..64")
    st.report(a.action)
    s.ctx.cp.enforcing = True


def _override(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    if a.arg_error is None:
        raise Unavailable(f"{s.where}: Override needs argError")
    st.override = True
    s.cfg[f"{s.prefix}override_ret"] = a.arg_error
    s.cfg["_override"] = True
    st.report("Override")
    s.ctx.cp.enforcing = True


def _track_sock(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    sock_index = a.arg_sock or 0  # argSock defaults to 0
    pos = args.positions.index(sock_index) if sock_index in args.positions else None
    if pos is None or args.plans[pos].gen_type not in (GA_SOCK, GA_SOCKET):
        raise Unavailable(f"{s.where}: {a.action} argSock {sock_index} names no sock/socket argument of the hook")
    if st.track:
        raise Unavailable(f"{s.where}: one TrackSock/UntrackSock per selector is served")
    st.track = GSF_TRACKSOCK if a.action == "TrackSock" else GSF_UNTRACKSOCK
    s.cfg[f"{s.prefix}sock_arg"] = pos
    st.report(a.action)


def _notify_enforcer(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    calls = s.ctx.enforcer_calls()
    if not calls:
        raise Unavailable(f"{s.where}: NotifyEnforcer needs spec.enforcers with calls")
    if not s.ctx.supports("fmod_ret"):
        raise Unavailable(f"{s.where}: NotifyEnforcer needs fmod_ret programs on the spec.enforcers calls "
                          f"({', '.join(calls)}), which this kernel lacks (fmod_ret: no, override_return: "
                          f"{'yes' if s.ctx.supports('override_return') else 'no'}; this build enforces "
                          "with fmod_ret only)")
    if a.arg_error:
        st.override = True
        s.cfg[f"{s.prefix}override_ret"] = a.arg_error
    if a.arg_sig:
        if not 0 < a.arg_sig < 65:
            raise Unavailable(f"{s.where}: NotifyEnforcer argSig must be 1..64")
        st.sig = a.arg_sig
    s.cfg["_enforcer"] = True
    st.report("NotifyEnforcer")
    s.ctx.cp.enforcing = True


def _unsupported_override(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    """Override (or NotifyEnforcer) where the hook cannot return a value: why."""
    supports = s.ctx.supports
    if supports("fmod_ret") or supports("override_return"):
        raise Unavailable(f"{s.where}: {a.action} needs an fmod_ret or kprobe override_return program on "
                          "the call: the kernel has one, but this lanner build does not serve it")
    raise Unavailable(f"{s.where}: {a.action} needs fmod_ret or override_return, which this kernel "
                      f"lacks (fmod_ret: {'yes' if supports('fmod_ret') else 'no'}, override_return: "
                      f"{'yes' if supports('override_return') else 'no'})")


def _unserved(s: SelectorScope, a: Any, st: ActionState, args: HookArgs, shape: HookShape) -> None:
    raise Unavailable(f"{s.where}: action {a.action} is not served by this lanner build")


HANDLERS: dict[str, Handler] = {
    "Post": _post, "NoPost": _nopost, "Sigkill": _signal, "Signal": _signal, "Override": _override,
    "TrackSock": _track_sock, "UntrackSock": _track_sock, "NotifyEnforcer": _notify_enforcer,
}
