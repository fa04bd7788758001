"""Small real reproductions of the analytic-CIL claims (ACIL, NeurIPS 2022, Sec. 4; DS-AL, AAAI 2024, Sec. 5).

Protocol: a backbone is trained on the base half of the classes only and frozen (ACIL's protocol); the other
half arrives in 5 phases of one class. Claims checked, each by comparing numbers computed here:

1. every analytic learner's A_last is within 1 point of the same learner trained jointly on all data at once
   (its "joint upper bound"; for ACIL, GACL, F-OAL and AIR the two are the same ridge solution, for DS-AL the
   compensation stream depends on the phases);
2. fine-tuning the same features' head by SGD forgets: its average forgetting exceeds ACIL's by a wide margin and
   its A_last falls well below the joint bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from continual import ACIL, AIR, DSAL, FOAL, GACL
from continual.baselines import FineTune, JointRidge
from continual.data import frozen_backbone_features, load_digits, load_mnist1d
from continual.runner import FeaturesAsOneBlock, run_protocol, summarize
from continual.scenarios import class_incremental

BUFFER = 512
# Declaring all classes up front fixes every head's width, so each learner compiles its update once per batch
# size instead of once per (batch size, width) -- the difference between ~1 and ~5 minutes on two busy cores.
CLASSES = 10


LEARNERS = {
    "ACIL": lambda: ACIL(gamma=1.0, buffer_size=BUFFER),
    "DS-AL": lambda: DSAL(gamma_main=1.0, gamma_comp=1.0, buffer_size=BUFFER),
    "GACL": lambda: GACL(gamma=1.0, buffer_size=BUFFER),
    "F-OAL": lambda: FeaturesAsOneBlock(FOAL(gamma=1.0, projection_dim=BUFFER, batch_size=64)),
    "AIR": lambda: AIR(gamma=1.0, buffer_size=BUFFER),
}


def _setup(name: str):
    if name == "digits":
        split, arch, epochs = load_digits(), "mlp", 20
    else:
        split, arch, epochs = load_mnist1d(num_samples=2000), "conv1d", 15
    phases = class_incremental(split.y_train, base_classes=5, phases=5, seed=0)
    feats = frozen_backbone_features(split, phases[0].seen_classes, arch=arch, feature_dim=64, epochs=epochs)
    return feats, phases


@pytest.fixture(scope="module", params=["digits", "mnist1d"])
def experiment(request):
    """Frozen-backbone features and phases, built once per dataset for the whole module."""
    return request.param, *_setup(request.param)


def _joint_accuracy(make, feats) -> float:
    model = make()
    model.partial_fit(feats.x_train, feats.y_train, classes=CLASSES)
    return 100 * float(np.mean(np.asarray(model.predict(feats.x_test)) == feats.y_test))


@pytest.mark.slow
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_analytic_learner_last_accuracy_matches_its_joint_bound(experiment, learner: str) -> None:
    dataset, feats, phases = experiment
    make = LEARNERS[learner]
    phased = summarize(run_protocol(make(), *feats, phases, classes=CLASSES))
    joint = _joint_accuracy(make, feats)
    assert abs(phased["A_last"] - joint) <= 1.0, (dataset, learner, phased, joint)
    # And the learner really learned the incremental classes (far above the 10% of chance).
    assert phased["A_last"] > 30.0, (dataset, learner, phased)


@pytest.mark.slow
def test_sgd_fine_tuning_forgets_where_analytic_learning_does_not(experiment) -> None:
    dataset, feats, phases = experiment
    acil = summarize(run_protocol(ACIL(gamma=1.0, buffer_size=BUFFER), *feats, phases, classes=CLASSES))
    finetune = summarize(run_protocol(FineTune(hidden=0, epochs=10, seed=0), *feats, phases, classes=CLASSES))
    joint = _joint_accuracy(lambda: JointRidge(gamma=1.0, buffer_size=BUFFER), feats)
    assert finetune["forgetting"] > acil["forgetting"] + 20.0, (dataset, finetune, acil)
    assert finetune["A_last"] < joint - 20.0, (dataset, finetune, joint)
    assert acil["A_last"] >= finetune["A_last"] + 20.0, (dataset, acil, finetune)
