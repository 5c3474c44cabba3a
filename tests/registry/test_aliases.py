"""Aliases and the NAME / NAME:VERSION / NAME@ALIAS reference grammar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymlops.registry import InvalidNameError, ModelNotFoundError, ModelRef, ModelStore, parse_ref


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """A store with digits:1..3 and iris:1."""
    store = ModelStore(str(tmp_path / "store"))
    for name, count in (("digits", 3), ("iris", 1)):
        for i in range(1, count + 1):
            src = tmp_path / f"src-{name}-{i}"
            src.mkdir()
            (src / "model.bin").write_bytes(f"{name}-{i}".encode())
            store.register(name, src, {"metrics": {"accuracy": 0.8 + i / 100}})
    return store


def test_set_and_read_aliases(store: ModelStore) -> None:
    store.set_alias("digits", "champion", 2)
    store.set_alias("digits", "challenger", 3)

    assert store.aliases("digits") == {"challenger": 3, "champion": 2}
    assert store.aliases("iris") == {}
    assert [v.aliases for v in store.list_versions("digits")] == [[], ["champion"], ["challenger"]]
    aliases_file = Path(store.uri) / "models" / "digits" / "aliases.json"
    assert json.loads(aliases_file.read_text()) == {"challenger": 3, "champion": 2}
    # The atomic write leaves no temporary file behind (hidden folders hold claims and locks).
    visible = sorted(p.name for p in aliases_file.parent.iterdir() if not p.name.startswith("."))
    assert visible == ["1", "2", "3", "aliases.json"]
    assert not list(aliases_file.parent.glob("*.tmp-*"))
    # The alias lock was released: no claim is left in it.
    assert not [p for p in (aliases_file.parent / ".locks").rglob("*") if p.is_file()]


def test_refs_resolve_to_the_right_version(store: ModelStore) -> None:
    store.set_alias("digits", "champion", 2)
    store.set_alias("digits", "challenger", 3)

    assert store.get("digits").version == 2
    assert store.get("digits:1").version == 1
    assert store.get("digits@challenger").version == 3
    assert store.get(ModelRef("digits", alias="challenger")).version == 3
    assert store.get(ModelRef("digits")).version == 2

    # Promoting moves the bare name; the old version stays reachable by number.
    store.set_alias("digits", "champion", 3)
    assert store.get("digits").version == 3
    assert (Path(store.get("digits:2").uri) / "model.bin").read_bytes() == b"digits-2"


def test_bare_name_without_champion_says_so(store: ModelStore) -> None:
    store.set_alias("digits", "challenger", 3)
    with pytest.raises(ModelNotFoundError) as info:
        store.get("digits")
    message = str(info.value)
    assert "'champion'" in message and "challenger -> 3" in message and "versions: 1, 2, 3" in message


def test_unknown_model_version_and_alias_list_what_exists(store: ModelStore) -> None:
    store.set_alias("digits", "champion", 1)

    with pytest.raises(ModelNotFoundError, match=r"'digts' not found.*models: digits, iris"):
        store.get("digts:1")
    with pytest.raises(ModelNotFoundError, match=r"no version 7; versions: 1, 2, 3"):
        store.get("digits:7")
    with pytest.raises(ModelNotFoundError, match=r"no alias 'staging'; aliases: champion -> 1"):
        store.get("digits@staging")
    with pytest.raises(ModelNotFoundError, match="models: digits, iris"):
        store.list_versions("nope")
    with pytest.raises(ModelNotFoundError, match="models: digits, iris"):
        store.aliases("nope")


def test_alias_must_point_at_an_existing_version(store: ModelStore) -> None:
    store.set_alias("digits", "champion", 1)
    with pytest.raises(ModelNotFoundError, match=r"version 9.*versions: 1, 2, 3"):
        store.set_alias("digits", "champion", 9)
    with pytest.raises(InvalidNameError, match="invalid alias") as info:
        store.set_alias("digits", "bad alias", 1)
    assert info.value.http_status == 400
    with pytest.raises(InvalidNameError, match="invalid alias"):
        store.set_alias("digits", "champion\n", 1)  # a trailing newline is not part of a valid name
    assert store.aliases("digits") == {"champion": 1}


def test_remove_alias(store: ModelStore) -> None:
    store.set_alias("digits", "champion", 1)
    store.set_alias("digits", "challenger", 2)
    store.remove_alias("digits", "challenger")

    assert store.aliases("digits") == {"champion": 1}
    assert store.get("digits:2").aliases == []
    with pytest.raises(ModelNotFoundError, match=r"no alias 'challenger'; aliases: champion -> 1"):
        store.remove_alias("digits", "challenger")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits", ModelRef("digits")),
        ("digits:12", ModelRef("digits", version=12)),
        ("digits@challenger", ModelRef("digits", alias="challenger")),
        ("  my-model.v2_x  ", ModelRef("my-model.v2_x")),
    ],
)
def test_parse_ref_accepts_the_three_forms(text: str, expected: ModelRef) -> None:
    parsed = parse_ref(text)
    assert parsed == expected
    assert parse_ref(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("digits:abc", "version 'abc' is not a positive integer"),
        ("digits:0", "not a positive integer"),
        ("digits:", "not a positive integer"),
        ("", "empty"),
        ("digits:1@champion", "not both"),
        ("digits@", "alias ''"),
        ("digits@1x", "alias '1x'"),
        ("bad name", "model name 'bad name'"),
        ("../etc:1", "model name '../etc'"),
        ("digits\n:1", "model name 'digits\\n'"),
        ("digits@cham\npion", "alias 'cham\\npion'"),
        ("digits:²", "version '²' is not a positive integer"),
    ],
)
def test_parse_ref_rejects_malformed_refs_clearly(text: str, complaint: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        parse_ref(text)
    assert complaint in str(info.value)
    assert "NAME:VERSION" in str(info.value)
