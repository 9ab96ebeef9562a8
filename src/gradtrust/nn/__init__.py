"""The model adapter: how every capability sees a classifier (module, inputs, outputs, state).

:func:`as_module` and :func:`prepare_inputs` (:mod:`.model`), the output contract :func:`logits_of` with
``output_index`` (:mod:`.outputs`), the final-layer finder and hook helpers (:mod:`.hooks`), the scoring state
(:mod:`.state`) and the one per-model cache (:mod:`.cache`; :func:`clear_cache` empties it).
"""

from gradtrust.nn.cache import clear as clear_cache
from gradtrust.nn.model import as_module, prepare_inputs
from gradtrust.nn.outputs import SelectOutput, logits_of, selecting_output

__all__ = ["SelectOutput", "as_module", "clear_cache", "logits_of", "prepare_inputs", "selecting_output"]
