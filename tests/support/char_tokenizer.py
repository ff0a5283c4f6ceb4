"""A tokenizer of one token per character (its code point), in the shape `LabelTrie.build`
reads: label answers share their common prefixes token for token, and JSON pieces such as
`","` are several tokens each."""

from __future__ import annotations


class CharTokenizer:
    """One token per character (its code point)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) for ch in text]
