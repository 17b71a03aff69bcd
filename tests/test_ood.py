"""Out-of-distribution reference: features unlike the training features score high; thresholds transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model import ModelConfig, build_model, load_model, read_extra_tensors, save_model
from core.ood import FeatureReference, feature_warning, header_warnings, transfer_quantile


def test_reference_scores_shifted_features_higher_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    mixing = rng.normal(0, 1, (64, 64))
    train = rng.normal(0, 1, (400, 64)) @ mixing
    near = rng.normal(0, 1, (100, 64)) @ mixing  # new draws from the training distribution
    far = near + 40.0 * rng.normal(0, 1, (100, 64))
    ref = FeatureReference.fit(train, k=16).with_threshold(10.0)
    assert ref.score(train).mean() == pytest.approx(2.0, rel=0.05)
    assert np.median(ref.score(far)) > 5 * np.median(ref.score(near))
    assert np.median(ref.score(near)) < 4
    model = build_model(ModelConfig.for_taxonomy(input_size=64))
    path = save_model(model, tmp_path / "m.safetensors", extra=ref.to_tensors())
    back = FeatureReference.from_tensors(read_extra_tensors(path))
    np.testing.assert_allclose(back.score(far), ref.score(far), rtol=1e-4)
    assert back.threshold == 10.0
    load_model(path)  # the loader leaves the ood.* tensors out of the model
    with pytest.raises(ValueError, match="named under"):
        save_model(model, tmp_path / "x.safetensors", extra={"bad": torch.zeros(1)})


def test_transfer_quantile_matches_the_held_out_false_alarm_rate():
    rng = np.random.default_rng(1)
    train = [rng.normal(0, 1, 1000) for _ in range(3)]
    held = [rng.normal(0.5, 1, 300) for _ in range(3)]  # unseen images score higher than training ones
    q = transfer_quantile(train, held, 0.05)
    flagged = np.mean(np.concatenate([h > np.quantile(t, q) for t, h in zip(train, held, strict=True)]))
    assert flagged <= 0.05 and q > 0.97


def test_header_warnings_and_feature_warning():
    assert header_warnings({"view_position": "LL"}) and header_warnings({"age_group": "child"})
    assert header_warnings({"view_position": "PA", "age_group": "adult", "body_part": "CHEST"}) == []
    ref = FeatureReference(np.zeros(2), np.eye(2), np.ones(2), 1.0, np.ones(2), threshold=3.0)
    assert feature_warning(2.0, ref) is None and "unlike" in feature_warning(5.0, ref)


def test_population_classifier_flags_the_other_population_at_the_stated_false_alarm(tmp_path):
    from core.ood import PopulationClassifier, population_warning

    rng = np.random.default_rng(2)
    adults = rng.normal(0, 1, (600, 32))
    children = rng.normal(0, 1, (400, 32))
    children[:, :4] += 1.5  # a few features differ between the populations
    clf, cv_flagged = PopulationClassifier.fit(adults, children[:200], false_alarm=0.05)
    assert cv_flagged > 0.8
    assert (clf.score(children[200:]) > clf.threshold).mean() > 0.8
    assert (clf.score(rng.normal(0, 1, (500, 32))) > clf.threshold).mean() < 0.12
    back = PopulationClassifier.from_tensors(clf.to_tensors())
    np.testing.assert_allclose(back.score(children[:5]), clf.score(children[:5]), rtol=1e-4, atol=1e-4)
    assert population_warning(clf.threshold + 1, clf) and population_warning(clf.threshold - 1, clf) is None


def test_other_adult_collections_keep_the_classifier_from_learning_the_hospital():
    """Adults of another hospital who share some features with the children (portable AP films, say) are called
    children by a classifier that only knows the training hospital's adults; half of them on the adult side, weighted
    as much as the training images, teach it the difference, and the other half are then rarely flagged while the
    children still are."""
    from core.ood import PopulationClassifier

    rng = np.random.default_rng(3)
    adults = rng.normal(0, 1, (800, 32))
    children = rng.normal(0, 1, (600, 32))
    children[:, :4] += 2.0
    other = rng.normal(0, 1, (200, 32))
    other[:, :2] += 2.0  # shares half the children's differences
    other[:, 8] += 1.0  # and has one of its own
    alone, _ = PopulationClassifier.fit(adults, children[:300], false_alarm=0.025)
    taught, _ = PopulationClassifier.fit(adults, children[:300], false_alarm=0.025, other_adults=other[:100])

    def flagged(clf, x):
        return float((clf.score(x) > clf.threshold).mean())

    assert flagged(alone, other[100:]) > 0.4  # 0.53
    assert flagged(taught, other[100:]) < 0.15  # 0.08
    assert flagged(taught, children[300:]) > 0.85  # 0.93 (0.99 alone)
    # Without other adults the fit is the one it always was.
    again, _ = PopulationClassifier.fit(adults, children[:300], false_alarm=0.025, other_adults=None)
    np.testing.assert_allclose(again.weight, alone.weight)
    assert again.threshold == alone.threshold


def test_the_header_clears_a_child_flag_only_with_an_adult_age_or_an_adult_sized_field(shared_data):
    """The adult Canon DX film (0.16 mm pixels, 2,000 x 2,128) is no child's film whatever its crop looks like; the
    dog (5 years, 25 x 20 cm) and the 1,024 px copies whose spacing gives 17 cm are not cleared."""
    from core.imaging.reader import read_image
    from core.ood import ADULT_FIELD_MM, PopulationCheck, header_rules_out_child, population_checks

    dicom = shared_data / "dicom"
    canon = read_image(dicom / "pljd_966_fixed_DX_MONO1_J2KR_chestPA.dcm").metadata
    assert canon.field_mm == pytest.approx((320.0, 340.5)) and header_rules_out_child(canon.to_dict())
    dog = read_image(next(dicom.glob("*canine*.dcm"))).metadata
    assert dog.age_group == "child" and min(dog.field_mm) < ADULT_FIELD_MM
    assert not header_rules_out_child(dog.to_dict())
    siim = read_image(next(dicom.glob("txv_SIIM*.dcm"))).metadata
    assert siim.field_mm == pytest.approx((172.0, 172.0)) and not header_rules_out_child(siim.to_dict())
    assert not header_rules_out_child({"field_mm": None, "age_group": None})
    assert header_rules_out_child({"field_mm": None, "age_group": "adult"})
    assert not header_rules_out_child({"field_mm": (ADULT_FIELD_MM, ADULT_FIELD_MM - 1), "age_group": None})

    class Fires:  # a population classifier whose threshold every score exceeds
        threshold = -1e9

    checks = population_checks(canon, population=(1.39, Fires()))
    assert checks == []
    flagged = population_checks(siim, population=(1.39, Fires()))
    assert [c.name for c in flagged] == ["looks like a child's film"] and isinstance(flagged[0], PopulationCheck)
