"""The pairwise judge (issue 25): a strong model, behind any OpenAI-compatible endpoint,
says which of two replies to the same prompt is better, under a rubric stated in a file.

Each prompt is judged twice, the candidate's reply first and then second (position swap):
a judge that favours a position gives each side one win per prompt, which cancels. A
judgement scores the candidate 1 (win), 0.5 (tie) or 0 (loss); the win rate is their mean
over every judgement, and its 95% Wilson interval is over the 2n judgements (a tie counting
half a win).

A verdict is read strictly: the reply must be `VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`
and nothing else. A timeout, an HTTP error or any other answer is a `JudgeError` naming the
judge's URL and what came back: never a tie, never a pass.

Pure: `build_messages`, `parse_verdict`, `score`, `wilson`. I/O: `judge_samples` (the
`openai` client, with the settings' base URL, model, key, timeout and retries).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from brightrun.errors import BrightrunError, InputError
from brightrun.settings import JudgeSettings, Settings

DEFAULT_RUBRIC = Path(__file__).resolve().parents[2] / "docs" / "judge_rubric.md"
Verdict = Literal["A", "B", "tie"]
_VERDICT = re.compile(r"\AVERDICT:\s*(A|B|TIE)\s*\Z", re.IGNORECASE)
Z95 = 1.959963984540054

INSTRUCTIONS = (
    "Compare reply A and reply B to the client's message under the rubric above. Answer with "
    "exactly one line and nothing else: `VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`."
)


class JudgeError(BrightrunError):
    """The judge could not be asked, or answered something that is not a verdict."""


class Judgement(BaseModel):
    prompt_index: int
    candidate_position: Literal["A", "B"]
    verdict: Verdict
    candidate_score: float


class JudgeResult(BaseModel):
    base_url: str
    model: str
    rubric_sha256: str
    prompts: int
    judgements: list[Judgement]
    wins: float  # candidate wins, a tie counting half
    win_rate: float
    ci95_low: float
    ci95_high: float


def required_judge(settings: Settings, wanted: bool) -> JudgeSettings | None:
    """The judge's settings when `wanted` (`--judge`), with a clear error when none are set."""
    if not wanted:
        return None
    try:
        judge = settings.judge
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if judge is None:
        raise InputError(
            "--judge needs a judge: set BRIGHTRUN_JUDGE_BASE_URL (an OpenAI-compatible endpoint, "
            "e.g. https://api.openai.com/v1), BRIGHTRUN_JUDGE_MODEL and BRIGHTRUN_JUDGE_API_KEY"
        )
    return judge


def load_rubric(path: Path | None) -> str:
    path = Path(path) if path else DEFAULT_RUBRIC
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(
            f"judge rubric {path}: cannot read it ({exc.strerror or exc}); set BRIGHTRUN_JUDGE_RUBRIC_FILE"
        ) from None
    if not text:
        raise InputError(f"judge rubric {path} is empty; the judge needs stated criteria")
    return text


def build_messages(rubric: str, prompt: str, reply_a: str, reply_b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"{rubric}\n\n{INSTRUCTIONS}"},
        {
            "role": "user",
            "content": f"Client's message:\n<<<\n{prompt}\n>>>\n\nReply A:\n<<<\n{reply_a}\n>>>\n\n"
            f"Reply B:\n<<<\n{reply_b}\n>>>",
        },
    ]


def parse_verdict(text: str | None, where: str) -> Verdict:
    match = _VERDICT.match((text or "").strip())
    if match is None:
        shown = (text or "")[:200]
        raise JudgeError(
            f"the judge at {where} answered {shown!r}, which is not a verdict (expected exactly "
            "`VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`); nothing was counted"
        )
    value = match.group(1).upper()
    return "tie" if value == "TIE" else value  # type: ignore[return-value]


def score(verdict: Verdict, candidate_position: Literal["A", "B"]) -> float:
    if verdict == "tie":
        return 0.5
    return 1.0 if verdict == candidate_position else 0.0


def wilson(successes: float, trials: int, z: float = Z95) -> tuple[float, float]:
    if trials <= 0:
        raise ValueError("no judgements")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _asker(settings: JudgeSettings) -> Callable[[list[dict[str, str]]], str | None]:
    import openai

    key = settings.api_key.get_secret_value() if settings.api_key else "unused"
    client = openai.OpenAI(
        base_url=settings.base_url,
        api_key=key,
        timeout=settings.timeout_seconds,
        max_retries=settings.retries,
    )
    where = settings.base_url
    tries = settings.retries + 1

    def ask(messages: list[dict[str, str]]) -> str | None:
        try:
            reply = client.chat.completions.create(
                model=settings.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=16,
            )
        except openai.APITimeoutError:
            raise JudgeError(
                f"the judge at {where} did not answer within {settings.timeout_seconds:g} s "
                f"({tries} tries); nothing was counted (BRIGHTRUN_JUDGE_TIMEOUT_SECONDS)"
            ) from None
        except openai.APIStatusError as exc:
            raise JudgeError(
                f"the judge at {where} answered HTTP {exc.status_code}: {str(exc.message)[:200]}; "
                "nothing was counted"
            ) from None
        except openai.APIError as exc:
            raise JudgeError(f"the judge at {where} could not be asked: {exc}; nothing was counted") from None
        choices = getattr(reply, "choices", None)
        if not choices:
            raise JudgeError(
                f"the judge at {where} answered without choices ({str(reply)[:200]}); nothing was counted"
            )
        return choices[0].message.content

    return ask


def judge_samples(
    settings: JudgeSettings,
    samples: Sequence[dict[str, str]],
    ask: Callable[[list[dict[str, str]]], str | None] | None = None,
) -> JudgeResult:
    """Every sample (`prompt`, `candidate`, `against` replies) judged in both orders."""
    if not samples:
        raise InputError("the judge has nothing to compare: the evaluation set has no held-out prompts")
    rubric = load_rubric(settings.rubric_file)
    ask = ask or _asker(settings)
    judgements = []
    for i, s in enumerate(samples):
        for position in ("A", "B"):
            a, b = (s["candidate"], s["against"]) if position == "A" else (s["against"], s["candidate"])
            verdict = parse_verdict(ask(build_messages(rubric, s["prompt"], a, b)), settings.base_url)
            judgements.append(Judgement(prompt_index=i, candidate_position=position, verdict=verdict,
                                        candidate_score=score(verdict, position)))  # fmt: skip
    wins = sum(j.candidate_score for j in judgements)
    low, high = wilson(wins, len(judgements))
    return JudgeResult(
        base_url=settings.base_url,
        model=settings.model,
        rubric_sha256=hashlib.sha256(rubric.encode()).hexdigest(),
        prompts=len(samples),
        judgements=judgements,
        wins=wins,
        win_rate=wins / len(judgements),
        ci95_low=low,
        ci95_high=high,
    )
