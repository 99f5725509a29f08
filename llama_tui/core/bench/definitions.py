"""What every bench figure means, written into each result's metadata and `llama-tui bench --help`."""

from __future__ import annotations

import time

ERROR_CLASSES = ("connect", "timeout", "truncated", "bad_response", "server_error")  # plus http_<status>
# How every reported figure is measured: written into each result's metadata and `bench --help`.
DEFINITIONS = {
    "ttft_ms": "time to first token: from the request's intended start (closed loop: when it was sent; open loop: "
               "its scheduled arrival) to the first event carrying a token (chat: the first content delta)",
    "itl_ms": "inter-token latency: each gap between consecutive token-carrying events of a request whose later "
              "event arrived inside the window; an event carrying k tokens gives k samples of gap/k "
              "(chat: per content chunk). Events that arrive in one socket read share a timestamp, so their "
              "gap is 0: ITL is resolved only to the client's read granularity (sub-ms tiny-model tokens "
              "often show p50 0.00)",
    "tpot_ms": "time per output token: (E2E - TTFT) / (n - 1) per request with n >= 2 tokens (vLLM's definition)",
    "e2e_ms": "end-to-end latency: from the intended start to the final event (last token) of the response",
    "output_tok_s": "tokens completed inside the window / window length. Tokens come from the server: the native "
                    "stream's cumulative tokens_predicted (an event may carry several), the stop event's "
                    "timings.predicted_n, the chat API's usage.completion_tokens (spread over its content chunks); "
                    "a request in flight at the window's end counts the tokens it received inside the window. "
                    "--no-stream: tokens of requests that completed inside the window",
    "latency_population": "closed loop: requests that finished inside the window; open loop: requests whose "
                          "intended start lies inside the window (all awaited, so slow ones are not dropped)",
    "requests_ok": "requests of the latency population that completed without error",
    "errors_by_class": "http_<status>, timeout (nothing received for --timeout s, or not finished within the "
                       "drain time), truncated (the stream ended before its final event), connect (no "
                       "connection or no response even after one retry), bad_response (not HTTP/SSE/JSON), "
                       "server_error (an error event)",
    "reconnects": "requests that failed before any response byte and succeeded on a fresh connection",
    "prompt_tokens": "prompt tokens the server processed (timings.prompt_n, excluding cached ones) of requests "
                     "that completed OK in the population; prompt_tok_s: those / window length",
    "cache_n": "prompt tokens served from llama-server's prompt cache (timings.cache_n) for the same requests, "
               "summed; cache_n_mean: per request; cache_hit_pct: cache_n / (cache_n + prompt_tokens)",
    "server_output_tok_s": "tokens the instances behind the target decoded between the window's start and end / the "
                           "time between the two reads. Decoded so far = llamacpp:tokens_predicted_total (which "
                           "llama-server raises only when a request ends) + each busy slot's n_decoded from /slots, "
                           "read as /metrics, /slots, /metrics until the counter held still between them; the load "
                           "stays on until the end read. server_rate_basis 'decoded' means that; 'completions' "
                           "means /slots was not readable and the figure is the counter alone, which moves in "
                           "steps of whole requests. server_rate_agreement_pct: (server - client) / client rate; "
                           "server_counter_tok_s: the counter's delta alone over the same reads, for comparison",
    "token_agreement_pct": "(tokens the client received during the whole step - the tokens the servers decoded "
                           "over the step) / the latter, in percent",
    "warmup": "warmup_s: from the load's start to the window's: at least --warmup, and until the requests in flight "
              "reached the step's concurrency and a request lifetime had passed (every stream's first request ended, "
              "and at least the median E2E so far) (--warmup "
              "0: no wait). The window is --duration, stretched to hold 3 request lifetimes (the warm-up's median "
              "E2E) up to --max-window (window_note); one that still held fewer than 3 (E2E p50) makes the step "
              "invalid",
    "client_cpu_percent": "CPU time of the load generator's event-loop thread(s) inside the window / window "
                          "length (100 = one core)",
    "loop_lag_p99_ms": "p99 of how late a 10 ms timer fired on the load generator's event loop(s)",
    "valid": "false when the throughput may be the client's rather than the servers': a worker above 70% of its "
             "calibrated ceiling (events/s), a worker's CPU above 90% of a core, or a mean event-loop lag, beyond "
             "the probe's 1 ms resolution, above 5% of the mean request (requests started late, so the offered "
             "load fell short); or when the step is no steady state: its window held fewer than 3 request "
             "lifetimes, or its warm-up ended at its cap",
    "latency_valid": "false when the client's event-loop lag p99 exceeds 25 ms: the latency percentiles then "
                     "include client scheduling delay (typically other processes, such as the fleet, holding the "
                     "cores); throughput is judged by `valid`",
}


def iso_now() -> str:
    """The local time with its UTC offset, as every bench result and calibration records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
