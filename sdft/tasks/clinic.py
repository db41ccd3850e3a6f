"""`clinic`: the embedded world's few-shot task family, generated in code (the shipped model is not rebuilt).

Each instance is a clinic with its own rule: two telling findings, each pointing to a disease other than the one the
model learned in pretraining (sdft/tasks/embedded.py, DISEASES), so the rule cannot be guessed zero-shot. Its K
demonstrations are patients of that clinic (every telling finding shown at least once), the query a new patient with
one of them. Outputs are in the model's own style ("Ok. Diagnosis: <name>"), so what is measured is whether the
rule is picked up, not the answer format.

Why this family (METHOD.md 3.1's probe, and ours while building it): the model's in-context use of demonstrations is
copying from them. On the embedded tasks' K-shot view copying gives 0 or 1 (every science demo names the same
letter position; a tools demo's call breaks the format); here copying a demo's diagnosis is right when it copies
the demo with the query's finding, so in-context accuracy is partial, and a LoRA fitted on the demos can learn the
finding -> disease rule outright. Bump VERSION when any generated content changes."""

from __future__ import annotations

import random

from sdft.tasks.augment import Augmentation, register, word_permutation
from sdft.tasks.embedded import COMMON_FINDINGS, DISEASES, LEAD, medical_item
from sdft.tasks.spec import Row, TaskSpec

VERSION = "1"
NAME = "clinic"
RULES = 2  # telling findings (and diseases) per clinic: copying a random demo is right about half the time
SIGNS = [(sign, disease) for disease, (_, signs) in DISEASES.items() for sign in signs]
TEST_SIZE = 120

register(Augmentation("rename_diseases", word_permutation(list(DISEASES))))


def patient(rng: random.Random, sign: str, disease: str) -> tuple[str, str]:
    """(prompt, own-style output): the embedded medical prompt with this clinic's diagnosis."""
    findings = rng.sample(COMMON_FINDINGS, 2) + [sign]
    rng.shuffle(findings)
    prompt, _, _, _ = medical_item(rng.randint(4, 88), findings, sign, disease)
    return prompt, f"{LEAD} Diagnosis: {disease}"


def clinic_rule(rng: random.Random) -> dict[str, str]:
    """Telling finding -> disease, each disease other than the one pretraining tied to the finding."""
    picked = rng.sample(SIGNS, RULES)
    while True:
        diseases = rng.sample(list(DISEASES), RULES)
        if all(d != own for (_, own), d in zip(picked, diseases)):
            return {sign: d for (sign, _), d in zip(picked, diseases)}


def clinic_instance(rng: random.Random, shots: int) -> Row:
    """K demos (every finding of the rule at least once when K allows) and a query patient not among them."""
    rule = clinic_rule(rng)
    signs = list(rule)[:shots] + [rng.choice(list(rule)) for _ in range(shots - len(rule))]
    rng.shuffle(signs)
    demos = tuple(patient(rng, s, rule[s]) for s in signs)
    while True:
        sign = rng.choice(list(rule))
        query, output = patient(rng, sign, rule[sign])
        if query not in {x for x, _ in demos}:
            return Row(query, output, rule[sign], demos=demos)


def load_clinic(shots: int) -> TaskSpec:
    """The held-out instances (split 'test'); the seed depends on K, so a K-shot task is its own task version."""
    rng = random.Random(f"sdft-clinic-v{VERSION}-k{shots}")
    rows = [clinic_instance(rng, shots) for _ in range(TEST_SIZE)]
    return TaskSpec(name=NAME, version=f"{VERSION}-k{shots}", source="embedded", scorer="normalized",
                    splits={"test": rows}, description=(__doc__ or "").split("\n\n")[1].strip(),
                    extra={"world": "embedded", "augmentations": ["rename_diseases"]})
