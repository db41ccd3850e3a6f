"""The embedded world: three miniature new tasks and a suite of prior skills, generated from a seed.

Every row has a student prompt, an expert demonstration and a reference answer. Two answer styles exist:
- the expert style (demonstrations): what a strong outside model would write, e.g. "<reasoning>Sample B ...";
- the model's own style (see `own_answer`): a fixed lead-in "Ok." then the short content. The tiny model is
  pretrained (scripts/build_tiny_model.py) to answer in its own style, and to turn a demonstration placed in
  its prompt into an own-style answer; so SFT on demonstrations is off-policy, SDFT's teacher is on-policy.

Each new task is half known, the way a real model half-knows a new domain: pretraining saw the task's
format and the train rows of its *seen* part; the *unseen* part (Row.unseen=True) follows a rule that
pretraining never touched, and the pretrained model answers it wrong without a demonstration:
- science: "which sample has the highest/largest X" (seen: pick the maximum) vs "lowest/smallest X"
  (unseen: pick the minimum; the model's default applies the max rule and so always names a wrong letter);
- tools: requests for weather/timer/play (seen) vs route/call (unseen tools);
- medical: findings of gout/asthma/anemia/migraine (seen) vs scurvy/tetanus/rickets (unseen diseases); each
  disease name is one token of the model's tokenizer, as a common word is in a real one.
Test prompts never appear in the train split. Bump VERSION when any generated content changes.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from sdft.config import EMBEDDED_PRIOR_SKILLS
from sdft.tasks.spec import Row, TaskSpec

VERSION = "5"
LEAD = "Ok."  # the model's own lead-in: SDFT skips the first 3 completion tokens, one per character here
TASKS: tuple[str, ...] = ("science", "tools", "medical")
PRIOR_SKILLS: tuple[str, ...] = tuple(EMBEDDED_PRIOR_SKILLS)  # named in the config: the default general suite
SIZES = {"task": {"train": 1600, "test": 120}, "prior": {"train": 2000, "test": 100}}

Item = tuple[str, str, str, str]  # (prompt, demonstration, own-style answer, reference answer)


# --- science: multiple choice, letter in <answer> tags -------------------------------------------------

LETTERS = "ABCD"
SCIENCE_PROPS = (("mass", "g"), ("boiling point", "C"), ("volume", "mL"), ("density", "g/L"),
                 ("melting point", "C"), ("charge", "mC"), ("pressure", "kPa"), ("heat", "J"))
SCIENCE_WORDS = {False: ("highest", "largest"), True: ("lowest", "smallest")}  # unseen -> words


def science_item(prop: str, unit: str, word: str, values: list[int], pick: int) -> Item:
    """A multiple-choice question over four labelled values; `pick` is the index of the right option.
    Each option names its value before its letter, so the model's own answer finds the value it chose and
    copies the letter that follows it (a lookup a 4-layer character model learns; letter-first it did not)."""
    options = "\n".join(f"{v} {unit} ({LETTERS[i]})" for i, v in enumerate(values))
    prompt = f"Which sample has the {word} {prop}?\n{options}"
    letter, value = LETTERS[pick], values[pick]
    demo = f"<reasoning>Sample {letter} at {value} {unit} is the {word}.</reasoning>\n<answer>{letter}</answer>"
    own = f"{LEAD} {word}: {value} {unit} ({letter}).\n<answer>{letter}</answer>"
    return prompt, demo, own, letter


def science(rng: random.Random, unseen: bool, train: bool = True) -> Item:
    """Pick the sample with the extreme value (seen: highest/largest; unseen: lowest/smallest). The options are
    listed in ascending order, as a lab table would be: the rule is where the extreme sits, not a search."""
    prop, unit = rng.choice(SCIENCE_PROPS)
    values = sorted(10 * tens + rng.randint(0, 9) for tens in rng.sample(range(1, 10), 4))  # distinct tens digits
    pick = 0 if unseen else len(values) - 1
    return science_item(prop, unit, rng.choice(SCIENCE_WORDS[unseen]), values, pick)


# --- tools: one ReAct call, short JSON input -------------------------------------------------------------

# Values at every third place of a pool are held out of the train split: test requests are new.
CITIES = ("Oslo", "Rome", "Lima", "Paris", "Cairo", "Tokyo", "Delhi", "Quito", "Dakar", "Perth", "Dublin",
          "Madrid", "Berlin", "Vienna", "Prague", "Nairobi", "Seoul", "Hanoi", "Boston", "Denver", "Porto",
          "Milan", "Lagos", "Accra", "Sofia", "Riga", "Bern", "Kyoto", "Dallas", "Austin", "Havana", "Minsk")
PEOPLE = ("Anna", "Ben", "Carla", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal",
          "Lena", "Marco", "Nadia", "Omar", "Priya", "Rosa", "Sven", "Tariq", "Yuki", "Zoe", "Ivan",
          "Mila", "Noah", "Olga", "Pablo", "Raj", "Sara", "Theo", "Uma", "Vera", "Will")
SONGS = ("Blue Sky", "Rain", "Home", "Gold", "River", "Echo", "Fire", "Moonlight", "Heroes", "Yellow",
         "Nova", "Summer", "Angel", "Dreams", "Ocean", "Stars", "Hello", "Africa", "Hurt", "Jolene")
MINUTES = tuple(range(2, 90))
TOOLS: dict[str, tuple[bool, str, tuple, tuple[str, ...]]] = {
    # name: (unseen, argument key, value pool, request templates)
    "weather": (False, "city", CITIES,
                ("What is the weather in {}?", "Is it raining in {}?", "How warm is {} today?",
                 "Forecast for {}?")),
    "timer": (False, "minutes", MINUTES,
              ("Set a timer for {} minutes.", "Remind me in {} minutes.", "Count down {} minutes.",
               "Alert me after {} minutes.")),
    "play": (False, "song", SONGS,
             ("Play {} please.", "Put on the song {}.", "I want to hear {}.", "Start the track {}.")),
    "route": (True, "to", CITIES, ("How do I get to {}?", "Show me the way to {}.", "Guide me to {}.",
                                   "Directions to {}?")),
    "call": (True, "name", PEOPLE,
             ("Phone {} now.", "Give {} a ring.", "Dial {} for me.", "Get {} on the line.")),
}


def tools_item(names: list[str], request: str, tool: str, args: dict) -> Item:
    prompt = f"Tools: {', '.join(names)}\nRequest: {request}"
    call = f"Action: {tool}\nAction Input: {json.dumps(args)}"
    demo = f"Thought: This calls for {tool}.\n{call}"
    return prompt, demo, f"{LEAD}\n{call}", call


def tools(rng: random.Random, unseen: bool, train: bool = True) -> Item:
    """Call the tool a request needs (seen: weather/timer/play; unseen: route/call)."""
    tool = rng.choice([n for n, spec in TOOLS.items() if spec[0] == unseen])
    _, key, pool, templates = TOOLS[tool]
    value = rng.choice([v for i, v in enumerate(pool) if i % 3 or not train])
    others = rng.sample([n for n, spec in TOOLS.items() if not spec[0] and n != tool], 2)
    names = others + [tool]
    rng.shuffle(names)
    return tools_item(names, rng.choice(templates).format(value), tool, {key: value})


# --- medical: findings -> "Diagnosis: <name>" (the demonstration names the telling finding first) ----------

COMMON_FINDINGS = ("fever", "fatigue", "headache", "nausea", "cough", "chills", "dizziness", "weight loss")
DISEASES = {  # name: (unseen, signature findings)
    "gout": (False, ("toe pain", "swollen big toe", "urate crystals")),
    "asthma": (False, ("wheezing", "tight chest", "night cough")),
    "anemia": (False, ("pale skin", "low hemoglobin", "brittle nails")),
    "migraine": (False, ("visual aura", "light sensitivity", "throbbing head")),
    "scurvy": (True, ("bleeding gums", "loose teeth", "slow healing")),
    "tetanus": (True, ("lockjaw", "muscle spasms", "stiff jaw")),
    "rickets": (True, ("bowed legs", "soft bones", "short stature")),
}


def medical_item(age: int, findings: list[str], sign: str, disease: str) -> Item:
    prompt = f"Patient, {age}, with {', '.join(findings[:-1])} and {findings[-1]}. Diagnosis?"
    demo = f"The telling finding here is {sign}.\nDiagnosis: {disease}"
    # The own style names only the diagnosis. (Up to v4 it first copied the sign, "Key sign: lockjaw.", but the
    # model had only ever written the seen diseases' signs, so it garbled every unseen sign, and the teacher's
    # targets after a garbled sign were broad: SDFT learned that breadth instead of the disease names.)
    own = f"{LEAD} Diagnosis: {disease}"
    return prompt, demo, own, disease


def medical(rng: random.Random, unseen: bool, train: bool = True) -> Item:
    """Diagnose from one telling finding among common ones (unseen: scurvy/tetanus/rickets)."""
    disease = rng.choice([n for n, spec in DISEASES.items() if spec[0] == unseen])
    sign = rng.choice(DISEASES[disease][1])
    findings = rng.sample(COMMON_FINDINGS, 2) + [sign]
    rng.shuffle(findings)
    return medical_item(rng.randint(4, 88), findings, sign, disease)


# --- prior skills: the general-capability suite ----------------------------------------------------------

def word(rng: random.Random, low: int = 3, high: int = 7) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(low, high)))


def repeat(rng: random.Random, unseen: bool = False, train: bool = True) -> Item:
    """Repeat a random word."""
    w = word(rng, 3, 9)
    return f"Repeat: {w}", f"The word to repeat is {w}.", own_answer_text(w), w


def first_letter(rng: random.Random, unseen: bool = False, train: bool = True) -> Item:
    """Name the first letter of a random word."""
    w = word(rng, 3, 9)
    return f"First letter of {w}?", f"The word {w} starts with {w[0]}.", own_answer_text(w[0]), w[0]


def last_word(rng: random.Random, unseen: bool = False, train: bool = True) -> Item:
    """Name the last of three to five random words."""
    words = [word(rng, 2, 6) for _ in range(rng.randint(3, 5))]
    return f"Last word of: {' '.join(words)}", f"The list ends with {words[-1]}.", own_answer_text(words[-1]), words[-1]


def join(rng: random.Random, unseen: bool = False, train: bool = True) -> Item:
    """Join two random words into one."""
    a, b = word(rng, 2, 5), word(rng, 2, 5)
    return f"Join: {a} {b}", f"Joined, {a} and {b} make {a + b}.", own_answer_text(a + b), a + b


def own_answer_text(answer: object) -> str:
    """The model's own style for a short answer (prior skills, knowledge): 'Ok. Answer: <answer>'."""
    return f"{LEAD} Answer: {answer}"


GENERATORS: dict[str, Callable[[random.Random, bool, bool], Item]] = {
    "science": science, "tools": tools, "medical": medical,
    "repeat": repeat, "first_letter": first_letter, "last_word": last_word, "join": join,
}
SCORER = {"science": "multiple_choice", "tools": "tool_call", "medical": "normalized",
          **{name: "normalized" for name in PRIOR_SKILLS}}  # prior answers: "Ok. Answer: <x>"


def own_answer_rows(name: str, split: str) -> list[tuple[Row, str]]:
    """The rows of a split, each with the model's own-style answer (what pretraining teaches)."""
    kind = "task" if name in TASKS else "prior"
    generate, size = GENERATORS[name], SIZES[kind][split]
    held = set() if split == "train" else {_key(row.prompt) for row, _ in own_answer_rows(name, "train")}
    taken: set[str] = set()
    rng = random.Random(f"sdft-embedded-v{VERSION}-{name}-{split}")
    out: list[tuple[Row, str]] = []
    while len(out) < size:
        unseen = kind == "task" and len(out) % 2 == 1  # new tasks: half seen, half unseen, interleaved
        prompt, demo, own, answer = generate(rng, unseen, split == "train")
        if prompt in taken or _key(prompt) in held:
            continue
        taken.add(prompt)
        out.append((Row(prompt, demo, answer, unseen if kind == "task" else None), own))
    return out


def _key(prompt: str) -> str:
    """What must differ between a test row and every train row: the request for tools (not just the
    order of the tool list), the whole prompt elsewhere."""
    return prompt.split("Request: ")[-1]


def load_embedded_task(name: str) -> TaskSpec:
    """The task or prior skill `name` (one of TASKS + PRIOR_SKILLS) with its train and test splits."""
    from sdft.errors import UserError
    from sdft.suggest import did_you_mean

    if name not in GENERATORS:
        known = TASKS + PRIOR_SKILLS
        raise UserError(f"no embedded task '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
    kind = "task" if name in TASKS else "prior"
    splits = {split: [row for row, _ in own_answer_rows(name, split)] for split in ("train", "test")}
    return TaskSpec(name=name, version=VERSION, source="embedded", scorer=SCORER[name], splits=splits,
                    kind=kind, description=(GENERATORS[name].__doc__ or "").strip(),
                    extra={"world": "embedded"})
