"""Workloads without a llama-server: dataset files, each workload's request bodies and headers, the
conversations' histories, the options' checks, the warm-up gate, the window verdict and the servers'
decoded-token reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from llama_tui.core.bench import BenchConfig, RequestShape, datasets, parse_n_predict, parse_workload
from llama_tui.core.bench import servers, steady
from llama_tui.core.bench.step import LiveCounters
from llama_tui.core.bench.traffic import make_traffic
from llama_tui.core.errors import UserError

# --------------------------------------------------------------------------------------------- datasets


def write(tmp_path: Path, text: str, name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_dataset_takes_prompts_chats_and_sharegpt_records(tmp_path):
    lines = [
        {"prompt": "plain", "system": "be terse"},
        {"text": "from a text column"},
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                        {"type": "text", "text": "b"}]},
                      {"role": "assistant", "content": "the reference answer"}]},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}]},
        "a bare string",
    ]
    path = write(tmp_path, "\n".join(orjson.dumps(x).decode() for x in lines) + "\n\n")
    ds = datasets.load(path)
    assert [e.messages for e in ds.entries] == [
        (("system", "be terse"), ("user", "plain")), (("user", "from a text column"),),
        (("system", "sys"), ("user", "ab")),  # the trailing assistant turn is the reference answer: dropped
        (("system", "s"), ("user", "q1")),  # ShareGPT: the first human turn
        (("user", "a bare string"),)]
    assert ds.kinds == {"prompt": 3, "messages": 1, "sharegpt": 1} and len(ds.sha256) == 64
    assert ds.entries[0].prompt == "be terse\n\nplain"
    # ShareGPT's own files are one JSON array
    arr = write(tmp_path, orjson.dumps([lines[3], lines[0]]).decode(), "a.json")
    assert len(datasets.load(arr).entries) == 2


@pytest.mark.parametrize("text,where", [
    ('{"prompt": "ok"}\n{"prompt": "broken"\n', "line 2: not JSON"),
    ('{"prompt": "ok"}\n\n{"answer": "x"}\n', 'line 3: no "prompt", "messages" or "conversations"'),
    ('{"messages": [{"role": "assistant", "content": "x"}]}\n', "line 1: no user message"),
    ('{"conversations": [{"from": "robot", "value": "x"}]}\n', 'line 1: turn 1 has an unknown "from"'),
    ('{"prompt": "   "}\n', 'line 1: empty "prompt"'),
    ('[{"prompt": "ok"}, 3]', "item 2: not an object or a string"),
    ("\n\n", "holds no prompts"),
])
def test_a_malformed_dataset_names_its_line(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        datasets.load(path)
    assert where in err.value.cause and str(path) in err.value.cause and "JSON value" in err.value.fix


def test_a_missing_dataset_file_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        datasets.load(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------------- options


def test_workload_names_and_output_lengths_parse():
    assert parse_workload("shared_prefix") == ("shared-prefix", None)
    assert parse_workload("dataset:/x/y.jsonl") == ("dataset", "/x/y.jsonl")
    assert parse_n_predict("128") == (128, None) and parse_n_predict("64:512") == (64, 512)
    assert parse_n_predict("64:64") == (64, None)
    for bad in ("agents", "dataset:"):
        with pytest.raises(UserError):
            parse_workload(bad)
    for bad in ("0", "64:32", "x", "1:y"):
        with pytest.raises(UserError, match="--n-predict"):
            parse_n_predict(bad)


def cfg(**kw) -> BenchConfig:
    return BenchConfig(url="http://127.0.0.1:1", concurrency=(4,), **kw)


@pytest.mark.parametrize("kw,cause", [
    ({"workload": "shared-prefix", "prefix_groups": 0}, "--prefix-groups must be an integer from 1"),
    ({"workload": "shared-prefix", "prefix_tokens": 10**7}, "--prefix-tokens must be an integer from 1"),
    ({"workload": "sessions", "turns": 0}, "--turns must be"),
    ({"workload": "sessions", "sessions": 2}, "--sessions 2 is below the concurrency 4"),
    ({"sessions": 8}, "--sessions applies to --workload sessions, not unique"),
    ({"workload": "sessions", "prefix_tokens": 8}, "--prefix-tokens applies to --workload shared-prefix"),
    ({"workload": "agents"}, "unknown workload 'agents'"),
    ({"workload": "dataset"}, "needs a file"),
    ({"n_predict": 64, "n_predict_max": 32}, "MIN above MAX"),
])
def test_workload_options_out_of_range_are_refused(kw, cause):
    with pytest.raises(UserError) as err:
        cfg(**kw).validated()
    assert cause in err.value.cause


def test_defaults_and_a_dataset_workload_given_as_one_string(tmp_path):
    assert cfg(workload="shared-prefix").validated().workload_params() == {"prefix_tokens": 512, "prefix_groups": 4}
    assert cfg(workload="sessions").validated().workload_params() == {"sessions": 4, "turns": 4}
    path = write(tmp_path, '{"prompt": "x"}\n')
    c = cfg(workload=f"dataset:{path}").validated()
    assert (c.workload, c.dataset) == ("dataset", str(path))
    with pytest.raises(UserError, match="do not apply to --workload dataset"):
        cfg(workload=f"dataset:{path}", prompt="p").validated()


# --------------------------------------------------------------------------------------------- traffic


def body(turn) -> dict:
    return orjson.loads(turn.body)


def test_unique_requests_carry_a_fresh_nonce_and_drawn_lengths_stay_in_range():
    t = make_traffic(RequestShape(n_predict=64, n_predict_max=512, prompt="P"), seed=1)
    bodies = [body(t.next_now()) for _ in range(200)]
    assert len({b["prompt"] for b in bodies}) == 200 and all(b["prompt"].endswith(": P") for b in bodies)
    ns = [b["n_predict"] for b in bodies]
    assert min(ns) >= 64 and max(ns) <= 512 and len(set(ns)) > 50 and "cache_prompt" not in bodies[0]
    again = make_traffic(RequestShape(n_predict=64, n_predict_max=512, prompt="P"), seed=1)
    assert [body(again.next_now())["n_predict"] for _ in range(200)] == ns  # the seed fixes the draws


def test_shared_prefix_agents_differ_from_the_first_token_and_send_their_id():
    shape = RequestShape(workload="shared-prefix", groups=3, prefix="SYSTEM TEXT", prompt="U", run_tag="rt")
    t = make_traffic(shape, seed=7)
    seen = {}
    for _ in range(60):
        turn = t.next_now()
        b = body(turn)
        system, _, user = b["prompt"].partition("\n\n")
        assert system.endswith("] SYSTEM TEXT") and user.endswith(": U") and b["cache_prompt"] is True
        seen.setdefault(turn.extra, set()).add(system)
    assert len(seen) == 3 and all(len(v) == 1 for v in seen.values())  # one system prompt per agent id
    assert {h.split(b": ")[0] for h in seen} == {b"X-Session-Id"}
    assert len({next(iter(v))[:10] for v in seen.values()}) == 3  # "[agent 0 ", "[agent 1 " ...
    chat = make_traffic(RequestShape(api="chat", workload="shared-prefix", groups=1, prefix="S", run_tag="r"), 1)
    assert [m["role"] for m in body(chat.next_now())["messages"]] == ["system", "user"]


class Reply:
    def __init__(self, text: str, error: str | None = None) -> None:
        self.text, self.error = [text], error


def test_a_conversation_carries_its_history_and_restarts_after_its_turns():
    shape = RequestShape(workload="sessions", sessions=2, turns=3, prompt="Q", run_tag="rt")
    t = make_traffic(shape, seed=1)
    first = t.next_now()
    second = t.next_now()
    assert t.next_now() is None  # both conversations have a turn in flight
    assert first.extra != second.extra and first.extra.startswith(b"X-Session-Id: rt-s0-0")
    t.finished(first, Reply(" A1"))
    turn2 = t.next_now()
    assert turn2.conversation is first.conversation and turn2.extra == first.extra
    assert body(turn2)["prompt"] == body(first)["prompt"] + " A1\n\n(turn 2) Q"
    t.finished(turn2, Reply(" A2"))
    turn3 = t.next_now()
    t.finished(turn3, Reply(" A3"))
    fresh = t.next_now()  # after 3 turns: a new conversation (a new id, no history)
    assert fresh.extra == b"X-Session-Id: rt-s0-1\r\n" and body(fresh)["prompt"].startswith("[conversation rt-s0-1]")
    t.finished(second, Reply("", error="truncated"))  # a failed turn ends its conversation too
    assert t.next_now().extra == b"X-Session-Id: rt-s1-1\r\n"


def test_a_turn_waits_for_a_free_conversation():
    async def go() -> list[bytes]:
        t = make_traffic(RequestShape(api="chat", workload="sessions", sessions=1, turns=5, run_tag="r"), seed=1)
        first = await t.next()
        waiting = asyncio.ensure_future(t.next())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        t.finished(first, Reply("hello"))
        nxt = await asyncio.wait_for(waiting, 1)
        return [m["role"] for m in body(nxt)["messages"]], body(nxt)["messages"][1]["content"]

    roles, reply = asyncio.run(go())
    assert roles == ["user", "assistant", "user"] and reply == "hello"


def test_conversations_are_split_among_workers_without_overlap():
    ids = []
    for w in range(3):
        t = make_traffic(RequestShape(workload="sessions", sessions=7, turns=2, run_tag="r"), seed=1, worker=w,
                         workers=3)
        while (turn := t.next_now()) is not None:
            ids.append(turn.extra)
    assert len(ids) == 7 and len(set(ids)) == 7


def test_a_dataset_is_drawn_in_a_seeded_order_every_entry_once_per_round(tmp_path):
    path = write(tmp_path, "".join(orjson.dumps({"prompt": f"p{i}"}).decode() + "\n" for i in range(5)))
    shape = RequestShape(workload="dataset", dataset=str(path), cache_prompt=False)
    t = make_traffic(shape, seed=3)
    rounds = [[body(t.next_now())["prompt"] for _ in range(5)] for _ in range(2)]
    assert sorted(rounds[0]) == sorted(rounds[1]) == [f"p{i}" for i in range(5)]
    assert [body(make_traffic(shape, seed=3).next_now())["prompt"]] == rounds[0][:1]
    assert body(t.next_now())["cache_prompt"] is True  # a dataset's repeats may come from the cache


# --------------------------------------------------------------------------------------------- steady state


def counters(worker: int, peak: int, e2e: list[float]) -> LiveCounters:
    return LiveCounters(worker, 0.0, 0, peak, 0, 0, [], peak, e2e)


def test_the_window_opens_after_the_warmup_in_flight_target_and_a_lifetime():
    gate = steady.WarmupGate("closed", 4, t_start=100.0, warmup=2.0, duration=12.0, lead=0.05)
    gate.update(counters(0, 2, []))
    assert gate.decide(101.0) is None
    gate.update(counters(1, 2, [5.0, 7.0]))  # both workers at their share, but 2 of the first 4 ended
    assert gate.decide(103.0) is None
    gate.update(counters(0, 2, [5.0, 7.0]))  # every stream's first request ended: median lifetime 6 s
    assert gate.decide(104.0) == (106.0, 124.0)  # not before t_start + one lifetime; 3 lifetimes long
    assert gate.decide(107.0) is None  # once
    fields = gate.fields()
    assert fields["warmup_s"] == 6.0 and fields["warmup_note"] is None
    assert fields["window_note"].startswith("window stretched from 12 s to 18.0 s")


def test_a_window_stretches_to_hold_three_lifetimes_up_to_its_limit():
    def window(lifetimes: list[float], duration: float = 10.0, max_window: float | None = None):
        gate = steady.WarmupGate("closed", 1, 0.0, 1.0, duration, 0.05, max_window)
        gate.update(counters(0, 1, lifetimes))
        tw, te = gate.decide(50.0)
        return round(te - tw, 3), gate.window_note

    assert window([2.0]) == (10.0, None)  # 3 lifetimes fit in --duration
    length, note = window([5.0])
    assert length == 15.0 and "stretched from 10 s to 15.0 s" in note
    assert window([20.0])[0] == 40.0  # at most 4 x --duration by default
    assert window([20.0], max_window=10.0) == (10.0, None)  # --max-window = --duration: fixed


def test_a_warmup_that_never_settles_ends_at_its_cap_and_says_why():
    gate = steady.WarmupGate("closed", 8, t_start=0.0, warmup=1.0, duration=5.0, lead=0.4)
    gate.update(counters(0, 3, []))
    assert gate.decide(30.0) is None
    window = gate.decide(1.0 + steady.WARMUP_CAP_S)
    assert window is not None and window[0] >= 1.0 + steady.WARMUP_CAP_S
    assert "in flight reached 3 of 8" in gate.note and "0 of the first 8 requests ended" in gate.note


def test_a_window_shorter_than_three_lifetimes_is_too_short():
    assert steady.window_verdict(12.0, 3000.0, 10, 0) is None
    short = steady.window_verdict(12.0, 5000.0, 10, 0)
    assert "2.4 request lifetimes" in short and "--max-window 15" in short
    assert "no request completed" in steady.window_verdict(12.0, None, 0, 0)
    with pytest.raises(UserError, match="--max-window 5 is below --duration 10"):
        BenchConfig(url="http://x:1", duration=10.0, max_window=5.0).validated()
    assert steady.window_verdict(12.0, None, 0, 3) is None  # errors say enough already


# --------------------------------------------------------------------------------------------- servers' reads


class FakeProbe:
    """Answers /metrics and /slots from scripted sequences."""

    def __init__(self, counters: list[float], slots: list | None) -> None:
        self.counters, self.slots = list(counters), slots

    def metrics(self, url: str) -> dict:
        return {"llamacpp:tokens_predicted_total": self.counters.pop(0), "llamacpp:prompt_tokens_total": 5.0}

    def json(self, url: str, path: str):
        return self.slots


def slot(busy: bool, n: int, as_list: bool = True) -> dict:
    nt = {"n_decoded": n, "n_remain": 10}
    return {"id": 0, "is_processing": busy, "next_token": [nt] if as_list else nt}


def test_decoded_tokens_are_the_counter_plus_busy_slots_read_while_the_counter_held_still():
    slots = [slot(True, 30), slot(False, 99), slot(True, 12, as_list=False)]
    r = servers.read_instance("u", FakeProbe([100, 164, 164, 164], slots))  # moved once, then held
    assert (r["decoded"], r["counter"], r["in_flight"], r["consistent"]) == (206, 164, 42, True)
    r = servers.read_instance("u", FakeProbe([1, 2, 3, 4, 5, 6, 7, 8], slots), tries=4)
    assert r["consistent"] is False and r["basis"] == "decoded"
    r = servers.read_instance("u", FakeProbe([50], None))  # no /slots: the counter alone
    assert (r["decoded"], r["basis"]) == (50, "completions")
