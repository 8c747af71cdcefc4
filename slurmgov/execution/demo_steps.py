"""Small, real step functions used by the example jobspecs, so that the examples run anywhere.

Each takes the outputs of its upstream steps (``inputs``, keyed by step id) plus its
``params``, does a little deterministic work, and returns JSON-able data for its dependants.
"""

from __future__ import annotations

import hashlib
import os
import time


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _work(seconds: float) -> int:
    """Burn a little CPU, as a stand-in for a model call, and return a checksum."""
    end = time.perf_counter() + seconds
    acc = 0
    while time.perf_counter() < end:
        acc = (acc * 31 + 7) % 1_000_003
    return acc


def plan_questions(inputs: dict, topic: str, branches: int = 4) -> dict:
    return {"topic": topic, "questions": [f"{topic}: angle {i + 1}" for i in range(branches)]}


def research(inputs: dict, angle: int, step=None, seconds: float = 0.2) -> dict:
    plan = inputs.get("plan") or {}
    questions = plan.get("questions", [])
    question = questions[angle - 1] if 0 < angle <= len(questions) else f"angle {angle}"
    _work(seconds)
    return {"question": question, "finding": _digest(question, "finding"),
            "gpus": list(step.gpu_ids) if step else []}


def critique(inputs: dict, seconds: float = 0.1) -> dict:
    findings = sorted(v["finding"] for v in inputs.values() if isinstance(v, dict) and "finding" in v)
    _work(seconds)
    return {"reviewed": len(findings), "verdict": _digest(*findings)}


def tensor_parallel_generate(inputs: dict, tp: int, prompts: int, step=None, seconds: float = 0.3) -> dict:
    _work(seconds)
    gpus = list(step.gpu_ids) if step else []
    if step is not None and len(gpus) != tp:
        raise RuntimeError(f"tensor parallel degree {tp} needs {tp} GPUs, got {len(gpus)}")
    return {"generated": prompts, "tp": tp, "gpus": gpus}


def judge(inputs: dict, rubric: str, seconds: float = 0.1) -> dict:
    _work(seconds)
    upstream = next(iter(inputs.values()), None)
    return {"rubric": rubric, "score": int(_digest(rubric, upstream), 16) % 100 / 100}


def finetune(inputs: dict, steps: int = 20, step=None, seconds: float = 0.3, until: str | None = None) -> dict:
    """``until``: a file whose appearance ends training (a stand-in for "stop when told": tests
    keep the allocation alive with it while they look at it; the step's time limit still applies)."""
    _work(seconds)
    while until and not os.path.exists(until):
        time.sleep(0.05)
    loss = [round(2.5 / (1 + 0.3 * i), 4) for i in range(steps)]
    return {"steps": steps, "final_loss": loss[-1], "gpus": list(step.gpu_ids) if step else []}


def flaky(inputs: dict, fail_times: int, step=None) -> dict:
    """Fails its first ``fail_times`` attempts (for retry tests and demos)."""
    attempt = step.attempt if step else 1
    if attempt <= fail_times:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return {"attempt": attempt}


def noop(inputs: dict) -> None:
    """Does nothing: for measuring what the engine and Dask add around a step."""
    return None


def chat(inputs: dict, prompt_tokens: int, completion_tokens: int, step=None, seconds: float = 0.1) -> dict:
    """A stand-in for a model call that reports the tokens it used, as an inference server's
    response does (``usage``): the ledger records them per step (tokens are metered, not priced)."""
    _work(seconds)
    return {"answer": _digest(prompt_tokens, completion_tokens, sorted(inputs)),
            "gpus": list(step.gpu_ids) if step else [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}
