"""Model spec factories as an operator writes them, for the tests (``STREAMLEARN_SPECS=name=tests.unit.models.user_specs:...``)."""

from river import linear_model, preprocessing, tree


def fraud_pipeline():
    """The operator's own pipeline: a classifier, though nothing in its name says so."""
    return preprocessing.StandardScaler() | linear_model.PAClassifier(C=0.5)


def price_tree():
    return tree.HoeffdingTreeRegressor(grace_period=50)


def broken():
    raise RuntimeError("the model registry is down")


def not_a_model():
    return {"model": "logreg"}
