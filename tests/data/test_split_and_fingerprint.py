from raymlops.config import DataConfig, SplitConfig, ValidationConfig
from raymlops.data.fingerprint import fingerprint_frame
from raymlops.data.ingest import load_builtin
from raymlops.data.split import split_frame
from raymlops.data.validate import validate_training_frame


def digits():
    raw = load_builtin("digits")
    return validate_training_frame(
        raw, DataConfig(source="builtin://digits"), ValidationConfig(forbid_constant_columns=False), "digits"
    )


def test_split_is_deterministic_and_stratified():
    df, schema = digits()
    a = split_frame(df, schema, SplitConfig(test_size=0.2, seed=7))
    b = split_frame(df, schema, SplitConfig(test_size=0.2, seed=7))
    assert all(x.index.equals(y.index) for x, y in zip(a, b, strict=True))
    train, val, test = a
    assert len(train) + len(val) + len(test) == len(df)
    assert set(train.index).isdisjoint(test.index)
    share_all = df["target"].value_counts(normalize=True).sort_index()
    share_test = test["target"].value_counts(normalize=True).sort_index()
    assert (share_all - share_test).abs().max() < 0.02


def test_fingerprint_changes_when_one_cell_changes():
    df = load_builtin("iris")
    before = fingerprint_frame(df)
    assert fingerprint_frame(df.copy()) == before
    df.iloc[3, 0] += 0.1
    assert fingerprint_frame(df) != before
