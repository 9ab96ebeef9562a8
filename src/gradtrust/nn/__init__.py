"""The model adapter: how every capability sees a classifier — :mod:`.model` (module, inputs), :mod:`.outputs`
(the output contract, ``output_index``), :mod:`.hooks` (final layer), :mod:`.state` and :mod:`.cache`."""

from gradtrust.nn.cache import clear as clear_cache
from gradtrust.nn.model import as_module, prepare_inputs
from gradtrust.nn.outputs import SelectOutput, logits_of, model_logits
from gradtrust.nn.state import scoring_state

__all__ = ["SelectOutput", "as_module", "clear_cache", "logits_of", "model_logits", "prepare_inputs", "scoring_state"]
