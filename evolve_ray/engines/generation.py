"""Execute a strategy plan on an engine, one turn at a time across all prompts.

The planner (core.strategies) says what to generate next; this module builds the token ids
(direct prompt or refinement prompt), submits the whole turn to the engine in one call
(continuous batching), and hands each finished turn to `emit` before starting the next.
No ray here: the actor passes an `emit` that streams to the buffer.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evolve_ray.config import Config
from evolve_ray.core.refine import build_refine_prompt, chat_prompt_ids
from evolve_ray.core.strategies import GenRequest, Strategy, plan_next
from evolve_ray.engines.base import Engine, SamplingSpec
from evolve_ray.types import Candidate, Prompt, candidate_id

Emit = Callable[[list[Candidate], list[str]], None]


def request_seed(base: int, round_: int, req: GenRequest) -> int:
    """A per-request seed that does not depend on which generator runs the request."""
    return zlib.crc32(f"{base}/{round_}/{req.prompt_id}/{req.chain}/{req.turn}".encode()) & 0x7FFFFFFF


@dataclass
class TurnPlan:
    requests: list[GenRequest] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)


@dataclass
class RunState:
    """What one `run` knows: candidates per prompt, and chains given up on (prompt too long)."""

    strategy: Strategy
    num_samples: int
    turns: int
    by_prompt: dict[str, list[Candidate]]
    texts: dict[str, str]
    dead_chains: set[tuple[str, int]] = field(default_factory=set)

    def next_requests(self, pid: str) -> list[GenRequest]:
        reqs = plan_next(
            self.strategy, num_samples=self.num_samples, turns=self.turns, existing=self.by_prompt[pid], prompt_id=pid
        )
        return [r for r in reqs if (r.prompt_id, r.chain) not in self.dead_chains]

    def add(self, cands: list[Candidate]) -> None:
        for c in cands:
            self.by_prompt[c.prompt_id].append(c)
            self.texts[c.id] = c.text


class GenerationRunner:
    """Runs the configured strategy for a set of prompts on one engine."""

    def __init__(self, engine: Engine, tokenizer: Any, cfg: Config) -> None:
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        g = cfg.generation
        self.spec = SamplingSpec(temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens)
        self.max_prompt_tokens = cfg.model.max_model_len - g.max_new_tokens

    def run(
        self,
        prompts: list[Prompt],
        *,
        round_: int,
        version: int,
        existing: list[Candidate],
        emit: Emit,
        strategy: Strategy | None = None,
        num_samples: int | None = None,
        turns: int | None = None,
        spec: SamplingSpec | None = None,
    ) -> dict[str, float]:
        """Generate every missing candidate of `prompts`; returns counters for the report.
        strategy / num_samples / turns / spec default to the config's data-collection settings."""
        g = self.cfg.generation
        by_prompt: dict[str, list[Candidate]] = {p.id: [] for p in prompts}
        for c in existing:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        st = RunState(
            strategy or g.strategy,
            g.num_samples if num_samples is None else num_samples,
            g.turns if turns is None else turns,
            by_prompt,
            {c.id: c.text for cs in by_prompt.values() for c in cs},
        )
        counts: Counter[str] = Counter()
        t0, tokens = time.perf_counter(), 0
        while plan := self._plan_turn(prompts, st, counts):
            seeds = [request_seed(g.seed, round_, r) for r in plan.requests]
            outs = self.engine.generate(plan.token_ids, spec or self.spec, seeds)
            cands = [
                Candidate(
                    prompt_id=r.prompt_id,
                    chain=r.chain,
                    turn=r.turn,
                    text=o.text,
                    parent_id=r.parent_id,
                    policy_version=version,
                    round=round_,
                    strategy=st.strategy,
                    num_tokens=len(o.token_ids),
                    finish_reason=o.finish_reason,
                    prompt_tokens=len(ids),
                )
                for r, o, ids in zip(plan.requests, outs, plan.token_ids, strict=True)
            ]
            st.add(cands)
            tokens += sum(c.num_tokens for c in cands)
            touched = {c.prompt_id for c in cands}
            emit(cands, [pid for pid in touched if not st.next_requests(pid)])
            counts["turns"] += 1
        # Prompts that needed nothing (already complete, or every chain skipped) are finished too.
        emit([], [p.id for p in prompts if not st.next_requests(p.id)])
        stats = {f"gen/{k}": float(v) for k, v in counts.items()}
        return stats | {"gen/tokens": float(tokens), "gen/seconds": time.perf_counter() - t0}

    def _plan_turn(self, prompts: list[Prompt], st: RunState, counts: Counter) -> TurnPlan | None:
        """The next turn's requests across all prompts, with their prompt token ids."""
        plan = TurnPlan()
        for p in prompts:
            for req in st.next_requests(p.id):
                ids = self._prompt_ids(req, p.question, st.texts, counts)
                if ids is None:
                    st.dead_chains.add((req.prompt_id, req.chain))
                    continue
                plan.requests.append(req)
                plan.token_ids.append(ids)
        return plan if plan.requests else None

    def _prompt_ids(self, req: GenRequest, question: str, texts: dict[str, str], counts: Counter) -> list[int] | None:
        if req.turn == 0:
            ids = chat_prompt_ids(self.tokenizer, question)
            if len(ids) > self.max_prompt_tokens:
                counts["skipped_question_too_long"] += 1
                return None
            return ids
        parent = texts[candidate_id(req.prompt_id, req.chain, req.turn - 1)]
        rp = build_refine_prompt(
            self.tokenizer,
            self.cfg.refinement.template,
            question,
            parent,
            max_prompt_tokens=self.max_prompt_tokens,
            on_too_long=self.cfg.refinement.on_too_long,
        )
        if rp.token_ids is None:
            counts[f"skipped_{rp.skip_reason}"] += 1
            return None
        counts["truncated_refine_prompts"] += int(rp.truncated)
        return rp.token_ids
