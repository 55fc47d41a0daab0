"""Injected faults: rules that match calls or launches and fire a given number of times.

A rule matches when every criterion it sets (not None) equals the call's value for that
key. `count` is how many more times it fires (None: until cleared). The control
endpoints add, list and clear rules; the model consumes them under its lock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

Criteria = dict[str, "str | None"]


@dataclass
class Rule:
    id: str
    code: str
    count: int | None
    match: Criteria
    message: str | None = None
    fired: int = 0

    def matches(self, context: Criteria) -> bool:
        return all(value is None or context.get(key) == value for key, value in self.match.items())

    def to_json(self) -> dict:
        return {"id": self.id, **self.match, "code": self.code, "count": self.count,
                "message": self.message, "fired": self.fired}


@dataclass
class RuleBook:
    """Rules of one kind (launch failures, Auto Scaling faults, DynamoDB faults)."""

    prefix: str
    rules: list[Rule] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(self, code: str, count: int | None, match: Criteria, message: str | None = None) -> Rule:
        rule = Rule(f"{self.prefix}-{next(self._ids)}", code, count, dict(match), message)
        self.rules.append(rule)
        return rule

    def peek(self, context: Criteria) -> Rule | None:
        """The first rule that would fire for `context`, without using it up."""
        return next((r for r in self.rules if r.matches(context)), None)

    def take(self, context: Criteria) -> Rule | None:
        """Fire the first matching rule: count it, and drop it once its count is spent."""
        rule = self.peek(context)
        if rule is not None:
            self.fire(rule)
        return rule

    def fire(self, rule: Rule) -> None:
        """Count one firing of `rule`; drop it once its count is spent."""
        rule.fired += 1
        if rule.count is not None:
            rule.count -= 1
            if rule.count <= 0:
                self.rules.remove(rule)

    def remove(self, rule_id: str) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def clear(self) -> int:
        n = len(self.rules)
        self.rules = []
        return n

    def to_json(self) -> list[dict]:
        return [r.to_json() for r in self.rules]
