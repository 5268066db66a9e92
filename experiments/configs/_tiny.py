"""The `tiny` variant of the configs: 5-way 1-shot, seconds on a CPU, for tests."""


def tiny(config, *, query, test_query, steps, log_every, eval_every, val_episodes,
         eval_episodes, meta_batch_size=None, eval_batch_size=None):
  """Shrinks `config` in place: 5-way 1-shot episodes, `steps` steps validated and
  checkpointed every `eval_every`, small validation and test sets. Returns it."""
  config.way = config.test_way = 5
  config.shot = config.test_shot = 1
  config.query, config.test_query = query, test_query
  if meta_batch_size is not None:
    config.meta_batch_size = meta_batch_size
  config.num_train_steps, config.log_every = steps, log_every
  config.eval_every = config.checkpoint_every = eval_every
  config.val_episodes, config.eval_episodes = val_episodes, eval_episodes
  if eval_batch_size is not None:
    config.eval_batch_size = eval_batch_size
  return config
