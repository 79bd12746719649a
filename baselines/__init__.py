"""baselines: the DFKD core (public extension API).

Third-party synthesizers and regularizers import only from here:
``Synthesizer``, ``SynthesisSetup``, ``SynthesisResult`` (the contract),
``Regularizer``, ``StepContext`` (hooks), ``ModelOutput``, ``SpikingLayerState``,
``StagedModel``, ``SpikingStagedModel``, ``match_stages`` (the model interface),
``DataSpec``, the registries and the errors.
"""
from .errors import (CheckpointError, ConfigError, DataError, DFKDError, NonFiniteLossError,
                     PluginError, UnknownNameError)
from .hooks import ModuleHooks, Regularizer, RegularizerSet, StepContext
from .models import (ModelOutput, SpikingLayerState, SpikingStagedModel, StagedModel,
                     match_stages)
from .registry import (DATASETS, REGISTRIES, REGULARIZERS, STUDENTS, SYNTHESIZERS, TEACHERS,
                       Registry)
from .spec import DataSpec
from .synthesizers.base import SynthesisResult, SynthesisSetup, Synthesizer

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "DFKDError", "NonFiniteLossError",
    "PluginError", "UnknownNameError", "ModuleHooks", "Regularizer", "RegularizerSet",
    "StepContext", "ModelOutput", "SpikingLayerState", "SpikingStagedModel", "StagedModel",
    "match_stages", "DATASETS", "REGISTRIES", "REGULARIZERS", "STUDENTS", "SYNTHESIZERS",
    "TEACHERS", "Registry", "DataSpec", "SynthesisResult", "SynthesisSetup", "Synthesizer",
]
