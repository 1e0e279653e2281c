#!/usr/bin/env python3
"""Write a synthetic training file in the brightrun-lora-v4 format.

The content is made up; the structure follows the format that the LoRA
infrastructure roadmap describes: a file header, a consultant profile, and
conversations whose training pairs each carry the system prompt, the whole
history so far, the current user input and the target response.

    make_brightrun.py --conversations 242 --seed 0 -o brightrun-242.json
"""

from __future__ import annotations

import argparse
import json
import random
import uuid

PERSONAS = ["anxious_planner", "pragmatic_optimist", "overwhelmed_avoider"]
ARCS = [
    "couple_conflict_to_alignment",
    "shame_to_acceptance",
    "panic_to_plan",
    "confusion_to_clarity",
    "grief_to_stability",
    "guilt_to_permission",
    "skepticism_to_trust",
]
TOPICS = [
    "negotiating_compensation",
    "emergency_fund",
    "student_loans",
    "first_home",
    "retirement_catch_up",
    "credit_card_debt",
    "job_loss",
    "new_baby",
    "divorce_finances",
    "aging_parents",
    "inheritance",
    "side_business",
    "college_savings",
    "budget_basics",
    "investing_basics",
    "insurance_gaps",
    "tax_surprise",
    "big_purchase",
    "early_retirement",
    "charitable_giving",
]
EMOTIONS = ["frustration", "anxiety", "shame", "hope", "confusion", "relief", "fear", "guilt"]
NAMES = ["Jennifer", "Marcus", "Priya", "Tom", "Aisha", "Daniel", "Rosa", "Kenji", "Leah", "Omar"]
SYSTEM = (
    "You are an emotionally intelligent financial planning chatbot representing Elena Morales, "
    "CFP, of Pathways Financial Planning. Acknowledge feelings before facts, explain money in "
    "plain language, never shame the client, and end each reply with one small next step."
)
OPENERS = [
    "I'm really stressed about {t}.",
    "Honestly I don't even know where to start with {t}.",
    "My partner and I keep fighting about {t}.",
    "I feel so behind on {t}.",
    "Can you help me think through {t}?",
    "I've been avoiding {t} for months.",
]
FOLLOWUPS = [
    "That makes sense, but what if {x}?",
    "Okay. I think the hard part is {x}.",
    "We tried that before and {x}.",
    "I hadn't thought about it that way. What about {x}?",
    "Part of me still worries that {x}.",
    "So what would you do first if {x}?",
]
WORRIES = [
    "we can't agree on a number",
    "the market drops right after I start",
    "my income is irregular",
    "I lose my job next year",
    "the rent goes up again",
    "I'm too old to catch up",
    "my parents need help soon",
    "the debt keeps growing",
]
EMPATHY = [
    "{n}, first, take a breath.",
    "{n}, what you're feeling is more common than you think.",
    "That sounds exhausting, {n}.",
    "Thank you for being honest about this, {n}.",
    "It makes sense that this feels heavy, {n}.",
]
BODY = [
    "Let's separate the numbers from the story for a moment.",
    "A plan you can keep beats a perfect plan you abandon.",
    "Start by writing down the three expenses that surprise you most each month.",
    "An emergency fund of even one month changes how decisions feel.",
    "When two people disagree about money they usually agree about the goal underneath.",
    "We can treat this as an experiment for ninety days, not a verdict on you.",
    "Automating the first step removes willpower from the equation.",
    "Your timeline matters more than anyone else's benchmark.",
]
STEPS = [
    "This week, pick one account and look at the last thirty days together.",
    "Tonight, write down the one number that scares you most and bring it next time.",
    "Before Friday, set up a small automatic transfer, even twenty dollars.",
    "Tomorrow, list what you'd want this money to do for you in five years.",
]


def response(rng: random.Random, name: str) -> str:
    parts = [rng.choice(EMPATHY).format(n=name)]
    parts += rng.sample(BODY, rng.randint(2, 4))
    parts.append(rng.choice(STEPS))
    return " ".join(parts)


def conversation(rng: random.Random, index: int) -> dict:
    topic = rng.choice(TOPICS)
    name = rng.choice(NAMES)
    turns = rng.randint(4, 9)
    history: list[dict] = []
    pairs = []
    for turn in range(1, turns + 1):
        if turn == 1:
            user = rng.choice(OPENERS).format(t=topic.replace("_", " "))
        else:
            user = rng.choice(FOLLOWUPS).format(x=rng.choice(WORRIES))
        reply = response(rng, name)
        # A few targets are missing; the history still records what the consultant said.
        target = None if rng.random() < 0.04 else reply
        pairs.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128))),
                "turn_number": turn,
                "system_prompt": SYSTEM,
                "conversation_history": [dict(m) for m in history],
                "current_user_input": user,
                "emotional_context": {
                    "detected_emotions": {
                        "primary": rng.choice(EMOTIONS),
                        "primary_confidence": round(rng.uniform(0.5, 0.95), 2),
                        "secondary": rng.choice(EMOTIONS),
                        "intensity": round(rng.uniform(0.2, 0.9), 2),
                    }
                },
                "target_response": target,
                "training_metadata": {
                    "difficulty_level": f"intermediate_conversation_turn_{turn}",
                    "quality_score": rng.choices([2, 3, 4, 5], weights=[1, 6, 2, 1])[0],
                    "demonstrates_skills": rng.sample(
                        ["pragmatic_optimist", "anxious_planner", "reframing", "validation", "next_step"], 2
                    ),
                },
            }
        )
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {
        "conversation_metadata": {
            "conversation_id": f"conv-{index:04d}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
            "total_turns": turns,
            "scaffolding": {
                "persona_key": rng.choice(PERSONAS),
                "emotional_arc_key": rng.choice(ARCS),
                "training_topic_key": topic,
            },
        },
        "training_pairs": pairs,
    }


def training_file(conversations: int, seed: int) -> dict:
    rng = random.Random(seed)
    convs = [conversation(rng, i) for i in range(conversations)]
    return {
        "training_file_metadata": {
            "file_name": f"synthetic-{conversations}-seed{seed}",
            "version": "4.0.0",
            "format_spec": "brightrun-lora-v4",
            "target_model": "claude-sonnet-4-5",
            "vertical": "financial_planning_consultant",
            "total_conversations": len(convs),
            "total_training_pairs": sum(len(c["training_pairs"]) for c in convs),
        },
        "consultant_profile": {
            "name": "Elena Morales, CFP",
            "business": "Pathways Financial Planning",
            "core_philosophy": {f"principle_{i}": p for i, p in enumerate(BODY[:5], 1)},
            "communication_style": {
                "tone": "warm, direct",
                "techniques": ["validation", "reframing"],
                "avoidances": ["jargon", "shame"],
            },
        },
        "conversations": convs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    with open(a.output, "w", encoding="utf-8") as f:
        json.dump(training_file(a.conversations, a.seed), f, ensure_ascii=False, indent=2)


if __name__ == "__main__":
    main()
