"""Process reward models: automatic step labels through the sandbox (Monte-Carlo continuations) and PRM training."""
