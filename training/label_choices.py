"""A classification task's training loss where its answer chooses a label, and nowhere else.

A single-label task is served by scoring its labels (`adapters.label_trie`): at each branching
point of the trie of the labels' answers, the model's next token among those that continue some
label. Everywhere else the task's grammar (compact JSON, no whitespace) leaves one token, and
the end of turn follows the closing brace, so what the model predicts there is never read.
`LabelChoices.cut` masks a training row's labels down to the branching points, so the loss is
the next-token loss where the served probability is read (1.75 of a BANKING77 answer's 12.2
tokens with SmolLM2) and the vocabulary projection runs on those positions only; and it drops
the row's tokens after the last of them, which no position that carries the loss attends to.
"""

from __future__ import annotations

from typing import Any

from adapters.label_trie import LabelPrefix, LabelTrie, classification_field
from adapters.manifest import TaskSpec
from training.framing import IGNORE_INDEX


class LabelChoices:
    """Which answer positions of a single-label task (a trie of two labels or more) choose
    between labels."""

    def __init__(self, trie: LabelTrie) -> None:
        self.trie = trie
        self._kept: dict[tuple[int, ...], tuple[bool, ...]] = {}

    @classmethod
    def for_task(cls, tokenizer: Any, spec: TaskSpec) -> LabelChoices | None:
        """The task's label choices; None when its answers are not scored as labels (no
        single `enum` field, one label's answer tokens begin another's, or one label only)."""
        field = classification_field(spec.output_schema, spec.labels)
        if field is None:
            return None
        try:
            trie = LabelTrie.build(tokenizer, field, spec.labels or [])
        except ValueError:
            return None
        return cls(trie) if trie.root is not None else None

    def cut(self, row: dict[str, Any]) -> None:
        """Mask `row`'s labels (the prompt masked, then the answer's tokens) but at the
        branching points, and drop its tokens after the last of them: a causal model's
        positions before a token never see it. Raises ValueError when the answer is not one
        of the trie's label answers (then end of turn)."""
        labels = row["labels"]
        start = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
        answer = tuple(labels[start:])
        kept = self._kept.get(answer)
        if kept is None:
            kept = self._kept[answer] = self._branching(answer)
        end = start + max(i for i, k in enumerate(kept) if k) + 1
        masked = [t if k else IGNORE_INDEX for t, k in zip(answer, kept, strict=True)]
        row["labels"] = (labels[:start] + masked)[:end]
        row["input_ids"] = row["input_ids"][:end]

    def _branching(self, answer: tuple[int, ...]) -> tuple[bool, ...]:
        kept = [False] * len(answer)
        node: LabelPrefix | None = self.trie.root
        while node is not None:
            depth = len(node)
            edge = self.trie.edges[node].get(answer[depth]) if depth < len(answer) else None
            if answer[:depth] != node or edge is None:
                raise ValueError(f"answer tokens {list(answer)} are not a label's answer")
            kept[depth] = True
            node = edge.branch
        return tuple(kept)
