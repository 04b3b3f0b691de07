"""Steps of a trajectory, sandbox replay for branches, verifiers, selection among samples, test-time scaling."""
