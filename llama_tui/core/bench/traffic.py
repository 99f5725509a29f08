"""The request stream one load worker sends in one step: each request's body and workload headers,
drawn from the step's `RequestShape` (core/bench/workload.py says what each workload means).

    traffic = make_traffic(shape, seed, worker, workers)
    turn = await traffic.next()          # waits only for `sessions`, until a conversation is free
    ... send turn.body (+ turn.extra headers), then:
    traffic.finished(turn, exchange)     # a conversation takes its reply into its history

Draws (agents, dataset order, drawn output lengths) follow the seed; the ids and nonces are fresh per
run (`shape.run_tag`, os.urandom), so no run is served from another run's prompt cache.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
from typing import TYPE_CHECKING

import orjson

from llama_tui.core.bench.workload import SESSION_HEADER, RequestShape

if TYPE_CHECKING:
    from llama_tui.core.bench.client import Exchange

_dumps = orjson.dumps


class Turn:
    """One request's body and extra header lines; `conversation` when it is a turn of one."""

    __slots__ = ("body", "extra", "conversation", "prompt", "messages")

    def __init__(self, body: bytes, extra: bytes = b"", conversation: "Conversation | None" = None,
                 prompt: str | None = None, messages: list | None = None) -> None:
        self.body = body
        self.extra = extra
        self.conversation = conversation
        self.prompt = prompt
        self.messages = messages


class Traffic:
    """The `unique` workload: one prompt, a fresh nonce in front of it per request."""

    def __init__(self, shape: RequestShape, seed: int, worker: int = 0, workers: int = 1) -> None:
        self.shape = shape
        self.worker = worker
        self.workers = workers
        self.draws = random.Random(seed ^ 0x5EED)
        self._nonce_rng = random.Random(os.urandom(16))
        self._seq = 0
        self._fixed_n = shape.n_predict if shape.n_predict_max is None else None

    def n_predict(self) -> int:
        n = self._fixed_n
        return n if n is not None else self.draws.randint(self.shape.n_predict, self.shape.n_predict_max or 1)

    def nonce(self) -> str:
        self._seq += 1
        return f"{self._nonce_rng.getrandbits(48):012x}-{self.worker}-{self._seq}"

    def next_now(self) -> Turn | None:
        """The next request, or None when it must wait (then `await next()`)."""
        return Turn(_dumps(self.shape.body(self.shape.user_part(self.nonce()), self.n_predict())))

    async def next(self) -> Turn:
        turn = self.next_now()
        assert turn is not None
        return turn

    def finished(self, turn: Turn, ex: "Exchange | None") -> None:
        """A request ended (`ex.error` None: it completed)."""


class SharedPrefix(Traffic):
    """`shared-prefix`: G agents, each with its own system prompt; each request picks an agent."""

    def __init__(self, shape: RequestShape, seed: int, worker: int = 0, workers: int = 1) -> None:
        super().__init__(shape, seed, worker, workers)
        self.system = [agent_tag(shape.run_tag, g) + shape.prefix for g in range(shape.groups)]
        self.headers = [f"{SESSION_HEADER}: {shape.run_tag}-agent-{g}\r\n".encode() for g in range(shape.groups)]

    def next_now(self) -> Turn:
        g = self.draws.randrange(len(self.system))
        user = f"{self.nonce()}: {self.shape.prompt}"
        if self.shape.api == "completion":
            body = self.shape.body(f"{self.system[g]}\n\n{user}", self.n_predict())
        else:
            body = self.shape.body(None, self.n_predict(), [{"role": "system", "content": self.system[g]},
                                                              {"role": "user", "content": user}])
        return Turn(_dumps(body), self.headers[g])


def agent_tag(run_tag: str, g: int) -> str:
    """What each agent's system prompt starts with: different from the first token on, so agents
    share no cached prefix."""
    return f"[agent {g} {run_tag}] "


class Conversation:
    """One multi-turn conversation: its id, its turn and its history (text, or chat messages)."""

    __slots__ = ("index", "generation", "turn", "history", "messages", "header")

    def __init__(self, index: int, run_tag: str) -> None:
        self.index = index
        self.generation = -1
        self.restart(run_tag)

    def restart(self, run_tag: str) -> None:
        self.generation += 1
        self.turn = 0
        self.history = ""
        self.messages: list[dict[str, str]] = []
        self.header = f"{SESSION_HEADER}: {self.id(run_tag)}\r\n".encode()

    def id(self, run_tag: str) -> str:
        return f"{run_tag}-s{self.index}-{self.generation}"


class Sessions(Traffic):
    """`sessions`: this worker's share of N conversations of T turns, at most one turn each in flight."""

    def __init__(self, shape: RequestShape, seed: int, worker: int = 0, workers: int = 1) -> None:
        super().__init__(shape, seed, worker, workers)
        # Conversations split like concurrency (core/bench/plans.split): shares differ by one, larger first.
        base, extra = divmod(shape.sessions, workers)
        share = base + (1 if worker < extra else 0)
        first = worker * base + min(worker, extra)
        # A worker without a share (more workers than conversations) still gets one of its own.
        indices = range(first, first + share) if share else range(shape.sessions + worker, shape.sessions + worker + 1)
        self.idle: collections.deque[Conversation] = collections.deque(
            Conversation(i, shape.run_tag) for i in indices)
        self.waiting: collections.deque[asyncio.Future] = collections.deque()

    def next_now(self) -> Turn | None:
        if not self.idle:
            return None
        return self._turn(self.idle.popleft())

    async def next(self) -> Turn:
        turn = self.next_now()
        if turn is not None:
            return turn
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return self._turn(await fut)

    def _turn(self, conv: Conversation) -> Turn:
        shape = self.shape
        if conv.turn == 0:
            user = f"[conversation {conv.id(shape.run_tag)}] {shape.prompt}"
        else:
            user = f"(turn {conv.turn + 1}) {shape.prompt}"
        if shape.api == "completion":
            prompt = f"{conv.history}\n\n{user}" if conv.history else user
            return Turn(_dumps(shape.body(prompt, self.n_predict())), conv.header, conv, prompt=prompt)
        messages = conv.messages + [{"role": "user", "content": user}]
        return Turn(_dumps(shape.body(None, self.n_predict(), messages)), conv.header, conv, messages=messages)

    def finished(self, turn: Turn, ex: "Exchange | None") -> None:
        conv = turn.conversation
        if conv is None:
            return
        if ex is not None and ex.error is None:
            reply = "".join(ex.text) if ex.text else ""
            if turn.prompt is not None:
                conv.history = turn.prompt + reply
            else:
                conv.messages = (turn.messages or []) + [{"role": "assistant", "content": reply}]
            conv.turn += 1
            if conv.turn >= self.shape.turns:
                conv.restart(self.shape.run_tag)
        else:  # an error or a cancelled turn: that conversation is over, a new one takes its place
            conv.restart(self.shape.run_tag)
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(conv)
                return
        self.idle.append(conv)


class DatasetPrompts(Traffic):
    """`dataset:FILE`: the file's entries in a seeded random order, again and again."""

    def __init__(self, shape: RequestShape, seed: int, worker: int = 0, workers: int = 1) -> None:
        super().__init__(shape, seed, worker, workers)
        from llama_tui.core.bench import datasets

        assert shape.dataset is not None
        self.entries = datasets.load_cached(shape.dataset).entries
        self.order: list[int] = []

    def next_now(self) -> Turn:
        if not self.order:
            self.order = list(range(len(self.entries)))
            self.draws.shuffle(self.order)
        entry = self.entries[self.order.pop()]
        if self.shape.api == "completion":
            return Turn(_dumps(self.shape.body(entry.prompt, self.n_predict())))
        return Turn(_dumps(self.shape.body(None, self.n_predict(), entry.chat())))


KINDS: dict[str, type[Traffic]] = {"unique": Traffic, "shared-prefix": SharedPrefix, "sessions": Sessions,
                                   "dataset": DatasetPrompts}


def make_traffic(shape: RequestShape, seed: int, worker: int = 0, workers: int = 1) -> Traffic:
    return KINDS[shape.workload](shape, seed, worker, workers)
