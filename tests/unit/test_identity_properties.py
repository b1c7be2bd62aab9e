"""Property: resolving any event sequence in any batch split, through a store that sees only what
the worker loads, gives the same persons as an offline union-find under the same rules, and no
person ever holds more identifiers of a type than the rules allow."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import count

from hypothesis import given, settings
from hypothesis import strategies as st

from services.identity.rules import Graph, IdentifierKey, IdentityRules, needs_counts, plan_batch

T0 = datetime(2026, 11, 1, tzinfo=UTC)
RULES = IdentityRules(
    version="property",
    priority=("user_id", "crm_id", "email", "*", "anonymous_id"),
    limits={"user_id": 1, "crm_id": 1, "email": 2, "anonymous_id": 3, "*": 2},
)
POOLS = {"user_id": 4, "crm_id": 3, "email": 5, "phone": 3, "anonymous_id": 8}

identifier = st.sampled_from(sorted(POOLS)).flatmap(
    lambda t: st.integers(0, POOLS[t] - 1).map(lambda n: (t, f"{t[0]}{n}"))
)
event = st.lists(identifier, min_size=0, max_size=4, unique=True).map(
    lambda keys: sorted(keys, key=lambda k: RULES.rank(k[0]))
)


class UnionFind:
    """The offline oracle: events one by one, persons as union-find sets with type counts."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.owner: dict[IdentifierKey, int] = {}
        self.counts: dict[int, Counter[str]] = {}
        self.refused: set[tuple[int, IdentifierKey]] = set()

    def find(self, person: int) -> int:
        while self.parent[person] != person:
            self.parent[person] = self.parent[self.parent[person]]
            person = self.parent[person]
        return person

    def add(self, index: int, keys: list[IdentifierKey]) -> None:
        roots: list[int] = []
        fresh: list[IdentifierKey] = []
        held: Counter[str] = Counter()
        for key in keys:
            root = self.find(self.owner[key]) if key in self.owner else None
            if root is not None and root in roots:
                continue
            adding = self.counts[root] if root is not None else Counter({key[0]: 1})
            limits = {t: RULES.limit(t) for t in adding}
            if any(
                lim is not None and held[t] + n > lim
                for t, n in adding.items()
                for lim in [limits[t]]
            ):
                self.refused.add((index, key))
                continue
            held += adding
            if root is None:
                fresh.append(key)
            else:
                roots.append(root)
        if not roots and not fresh:
            return
        winner = min(roots) if roots else len(self.parent)  # persons are numbered by birth
        if not roots:
            self.parent[winner] = winner
            self.counts[winner] = Counter()
        for root in roots:
            if root != winner:
                self.parent[root] = winner
                self.counts[winner] += self.counts.pop(root)
        for key in fresh:
            self.owner[key] = winner
            self.counts[winner][key[0]] += 1

    def persons(self) -> dict[str, frozenset[IdentifierKey]]:
        """Live persons (named like the store names them: by birth order) and their keys."""
        groups: dict[str, set[IdentifierKey]] = {}
        for key, person in self.owner.items():
            groups.setdefault(f"p{self.find(person):05d}", set()).add(key)
        return {p: frozenset(g) for p, g in groups.items()}


class Store:
    """The database as the worker sees it: it loads links for a batch's identifiers, and
    creation times and counts only for the persons :func:`needs_counts` names."""

    def __init__(self) -> None:
        self.links: dict[IdentifierKey, str] = {}
        self.created: dict[str, datetime] = {}
        self.refused: set[tuple[int, IdentifierKey]] = set()
        numbers = count()
        self.new_oneid = lambda: f"p{next(numbers):05d}"

    def run(self, batch: list[tuple[int, list[IdentifierKey]]]) -> None:
        keys = {k for _, ks in batch for k in ks}
        links = {k: o for k, o in self.links.items() if k in keys}
        wanted = needs_counts([ks for _, ks in batch], links)
        created = {o: self.created[o] for o in wanted}
        counts = {
            o: Counter(t for (t, _), owner in self.links.items() if owner == o) for o in wanted
        }
        timed = [(ks, T0 + timedelta(seconds=i)) for i, ks in batch]
        plan = plan_batch(timed, Graph(links, created, counts), RULES, self.new_oneid)
        self.created.update(plan.new_persons)
        for merge in plan.merges:
            for key, owner in self.links.items():
                if owner == merge.absorbed:
                    self.links[key] = merge.winner
            del self.created[merge.absorbed]
        self.links.update(plan.new_links)
        self.refused |= {(batch[r.event_index][0], r.key) for r in plan.refusals}

    def persons(self) -> dict[str, frozenset[IdentifierKey]]:
        """Live persons and their keys."""
        groups: dict[str, set[IdentifierKey]] = {}
        for key, person in self.links.items():
            groups.setdefault(person, set()).add(key)
        return {p: frozenset(g) for p, g in groups.items()}


@settings(max_examples=300, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=40), cuts=st.lists(st.integers(1, 8)))
def test_batched_resolution_equals_union_find_and_respects_limits(
    events: list[list[IdentifierKey]], cuts: list[int]
) -> None:
    oracle = UnionFind()
    for index, keys in enumerate(events):
        oracle.add(index, keys)

    store = Store()
    indexed = list(enumerate(events))
    start, sizes = 0, iter(cuts)
    while start < len(indexed):
        size = next(sizes, len(indexed))
        store.run(indexed[start : start + size])
        start += size

    # same persons, same identifiers each, and the same survivor (the oldest) of every merge
    assert store.persons() == oracle.persons()
    assert store.refused == oracle.refused
    for group in store.persons().values():
        for id_type, n in Counter(t for t, _ in group).items():
            limit = RULES.limit(id_type)
            assert limit is None or n <= limit, (id_type, n, group)
    assert all(store.links[k] in store.created for k in store.links)  # no link to a dead person
