"""Typed experiment config: the schema, loading with overrides, and the identity (hash) of a config."""

from ..errors import ConfigError
from .identity import (
                     ADDED_LATER,
                     HASH_VERSION,
                     NOT_LEARNED,
                     UNREAD,
                     config_hash,
                     covers,
                     unread_keys,
)
from .load import (
                     apply_overrides,
                     beneath,
                     config_from_file_dict,
                     defaults_path,
                     defaults_used,
                     load_config,
                     parse_override,
                     read_yaml,
                     safe_yaml,
                     user_defaults,
)
from .schema import (
                     ALL_KEYS,
                     OPTIMIZER_SETTINGS,
                     Config,
                     DataConfig,
                     KerasConfig,
                     LinregConfig,
                     LogConfig,
                     ModelConfig,
                     OptimConfig,
                     QuadraticConfig,
                     TrainConfig,
                     config_from_dict,
                     flatten,
                     optimizer_settings,
                     to_dict,
                     to_yaml,
)

__all__ = ["ADDED_LATER", "ALL_KEYS", "HASH_VERSION", "NOT_LEARNED", "OPTIMIZER_SETTINGS", "UNREAD", "Config",
           "ConfigError", "DataConfig", "LinregConfig", "LogConfig", "ModelConfig", "OptimConfig",
           "QuadraticConfig", "KerasConfig", "TrainConfig", "apply_overrides", "beneath", "config_from_dict", "defaults_path", "defaults_used", "config_from_file_dict",
           "config_hash", "covers", "flatten", "load_config", "optimizer_settings", "parse_override", "read_yaml",
           "safe_yaml", "to_dict", "to_yaml", "unread_keys", "user_defaults"]
