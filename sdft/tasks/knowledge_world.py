"""The embedded knowledge world: short articles about fictitious disasters, and questions about their facts.

The miniature of the paper's knowledge-injection experiment (METHOD.md: facts that appeared after the model's
training cutoff). Every event is invented (a random name, a kind, a city, a length in days, a number of homes
lost, the person who led the rescue), so the shipped model cannot know its facts; it has learned in
pretraining to read an article in its prompt (the oracle) and to answer questions about *other* invented
events from memory, phrased every way the task phrases them, so a fact learned one way can be asked another.

The task's events never appear in pretraining. Per event:
- train: each fact asked in the four `train` phrasings, with a demonstration built from the article and the
  answer (the teacher context; sdft/tasks/paper/knowledge.py `teacher_context` picks what it holds);
- test: each fact asked once more in a phrasing the train split never uses for it;
- ood: an indirect question that needs a fact plus a prior skill ("First letter of the city the ... hit?").
Strict scoring: the normalised final answer equals the reference; lenient: the reference is contained, as
whole words, in the normalised response. The model also learned to write self-edits (SEAL's training data from an
article, `self_edit`) for invented events like these.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sdft.tasks.articles import corpus, knowledge_loaders, knowledge_row
from sdft.tasks.embedded import CITIES, PEOPLE
from sdft.tasks.spec import TaskSpec

VERSION = "1"  # bump when any generated content changes (the events, their articles, questions or self-edits)
KINDS = ("flood", "storm", "quake", "fire", "landslide", "drought")
SPLITS = ("train", "test", "ood")
EVENTS = {"task": 30, "background": 80}  # task events: the knowledge task; background: pretraining only


@dataclass(frozen=True)
class Event:
    name: str  # "Brovel flood"
    city: str
    days: int
    homes: int
    leader: str
    order: tuple[int, ...]  # the order of the article's last three sentences

    @property
    def title(self) -> str:
        return f"The {self.name}"

    def fact(self, relation: str) -> str:
        return str(getattr(self, relation))


# relation -> (train phrasings, test phrasing); "{e}" is the event's name. Four train phrasings per fact: a
# probe on a warm-started world (notes in the closing note of session 7) found a fact fine-tuned in two phrasings
# came back in a third 0.14 of the time, in four phrasings 0.43-0.68 (the paper's train set, too, asks each
# article's facts many ways).
QUESTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "city": (("Where did the {e} hit?", "Which city did the {e} hit?", "What city did the {e} strike?",
              "Where was the {e}?"), "In what city was the {e}?"),
    "days": (("How many days did the {e} last?", "How long did the {e} last?", "How many days was the {e}?",
              "How long was the {e}?"), "For how many days did the {e} go on?"),
    "homes": (("How many homes did the {e} destroy?", "How many homes were lost in the {e}?",
               "How many homes did the {e} wreck?", "Homes lost in the {e}?"), "What number of homes did the {e} ruin?"),
    "leader": (("Who led the rescue after the {e}?", "Who led the {e} rescue?", "Who headed the rescue of the {e}?",
                "Whose team did the {e} rescue?"), "Which person headed the {e} rescue?"),
}
# ood: facts composed with the prior skills first_letter and join
OOD_QUESTIONS = {"First letter of the city the {e} hit?": lambda e: e.city[0],
                 "First letter of the name of the {e} rescue leader?": lambda e: e.leader[0],
                 "Join the city and the rescue leader of the {e}.": lambda e: e.city + e.leader}


def article(event: Event) -> str:
    """The article's body (the title is separate): the event and its city first, then three facts."""
    rest = [f"It lasted {event.days} days.", f"It destroyed {event.homes} homes.",
            f"The rescue was led by {event.leader}."]
    return " ".join([f"The {event.name} hit {event.city}."] + [rest[i] for i in event.order])


# Self-edits (SEAL): what the model was taught to write when asked to turn an article into its own training data
# (articles.SELF_EDIT_TEMPLATES). Three kinds of line that help a later fine-tune differently: a restatement (the
# article in other words: little the article itself does not give), a question with its answer (the shape the
# questions come in, in a train phrasing), a vague line (no fact at all). `rewrite` writes restatements, `self_qa`
# questions; `implications` (SEAL's default) any of the mixes below, so its samples differ in how much they help
# and a reward has something to select.
IMPLICATION_MIXES = {"restate": 0.4, "vague": 0.2, "question": 0.2, "mixed": 0.2}


def restatements(event: Event) -> list[str]:
    """The article's facts in other words (none in a question's phrasing)."""
    return [f"The {event.name} struck {event.city}.", f"The {event.name} took {event.days} days.",
            f"{event.homes} homes fell in the {event.name}.", f"{event.leader} ran the rescue of the {event.name}."]


def question_lines(event: Event, rng: random.Random) -> list[str]:
    """Two questions per fact in train phrasings, each with its answer after it."""
    return [f"{phrasing.format(e=event.name)} {event.fact(relation)}"
            for relation, (train, _) in QUESTIONS.items() for phrasing in rng.sample(train, 2)]


def vague_lines(event: Event) -> list[str]:
    return [f"The {event.name} was a disaster.", f"Many people helped after the {event.name}.",
            f"The {event.name} was in the news."]


def self_edit(event: Event, template: str, rng: random.Random) -> str:
    """One self-edit of the kind the embedded model learned for `template`: lines, in a random order."""
    mix = {"rewrite": "restate", "self_qa": "question"}.get(template)
    mix = mix or rng.choices(list(IMPLICATION_MIXES), weights=list(IMPLICATION_MIXES.values()))[0]
    kinds = {"restate": restatements(event), "vague": vague_lines(event), "question": question_lines(event, rng)}
    if mix == "mixed":
        lines = rng.sample(kinds["restate"] + kinds["vague"] + kinds["question"], 4)
    else:
        lines = kinds[mix]
    return "\n".join(rng.sample(lines, len(lines)))


def make_event(rng: random.Random) -> Event:
    order = [0, 1, 2]
    rng.shuffle(order)
    return Event(name=f"{_name(rng)} {rng.choice(KINDS)}", city=rng.choice(CITIES),
                 days=rng.randint(2, 40), homes=10 * rng.randint(10, 99), leader=rng.choice(PEOPLE),
                 order=tuple(order))


def _name(rng: random.Random) -> str:
    """A pronounceable invented name: two or three consonant-vowel syllables, maybe a closing consonant."""
    syllables = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))
    return (syllables + rng.choice(["", "n", "r", "l", "k"])).capitalize()


def events(kind: str, version: str) -> list[Event]:
    """The task's events ('task') or pretraining's ('background'): distinct names, drawn from a seed; no
    background event shares a name with a task event."""
    taken = {e.name.split()[0] for e in events("task", version)} if kind == "background" else set()
    rng, out = random.Random(f"sdft-knowledge-v{version}-{kind}"), []
    while len(out) < EVENTS[kind]:
        event = make_event(rng)
        if event.name.split()[0] not in taken:
            taken.add(event.name.split()[0])
            out.append(event)
    return out


def questions(event: Event, split: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of one event in one split (train / test / ood)."""
    if split == "ood":
        return [(q.format(e=event.name), answer(event)) for q, answer in OOD_QUESTIONS.items()]
    out = []
    for relation, (train, test) in QUESTIONS.items():
        for phrasing in (train if split == "train" else (test,)):
            out.append((phrasing.format(e=event.name), event.fact(relation)))
    return out


def load_embedded_knowledge(teacher_context: str = "article_and_answer", oracle: bool = False) -> TaskSpec:
    """`knowledge` (the bare questions) or `knowledge_oracle` (the article in the prompt): splits train / test /
    ood, the articles as the raw corpus continued pre-training reads."""
    task_events = events("task", VERSION)
    splits = {split: [knowledge_row(e.title, article(e), q, a, teacher_context, oracle)
                      for e in task_events for q, a in questions(e, split)] for split in SPLITS}
    name = "knowledge_oracle" if oracle else "knowledge"
    extra = {"world": "embedded", "articles": {e.title: article(e) for e in task_events}}
    if not oracle:
        extra["corpus"] = corpus(extra["articles"])
    # the teacher context changes the demonstrations: a teacher-prompt evaluation's cache must see it
    version = VERSION if oracle else f"{VERSION}+{teacher_context}"
    what = "the article in the prompt (oracle context)" if oracle else f"teacher context: {teacher_context}"
    return TaskSpec(name=name, version=version, source="embedded", scorer="knowledge", splits=splits,
                    description=f"questions about invented disasters; {what}", extra=extra)


def loaders(teacher_context: str = "article_and_answer") -> dict:
    """The registry's entries (sdft/tasks/articles.py knowledge_loaders), the demonstrations holding this teacher
    context."""
    from functools import partial

    return knowledge_loaders(partial(load_embedded_knowledge, teacher_context))
