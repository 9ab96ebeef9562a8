"""Models: ``load_model(spec, weights, num_classes)`` → :class:`LoadedModel`, and the bundled digits networks."""

from gradtrust.models.base import LoadedModel
from gradtrust.models.digits import DIGITS_CLASSES, available_digits_models, build_digits_model
from gradtrust.models.loading import available_models, file_sha256, hub_checkpoint_path, load_model, read_state_dict
from gradtrust.models.preprocessing import Preprocessing
from gradtrust.models.subset import model_for_dataset, restrict_outputs
from gradtrust.nn.outputs import SelectOutput

__all__ = ["DIGITS_CLASSES", "LoadedModel", "available_digits_models", "build_digits_model", "available_models",
           "file_sha256", "hub_checkpoint_path", "load_model", "read_state_dict", "Preprocessing",
           "SelectOutput", "model_for_dataset", "restrict_outputs"]
