"""Agents that learn to play from unlabelled video (Genie §3.3): behavioural cloning on a frozen LAM's latent actions,
decoded to real actions with a map fitted on a few labelled transitions, against cloning on the true actions.

- `loop.play`: the environment loop, a plain function of a policy callable, an environment and a generator;
- `model`: the policy CNN; `agent`: agent folders (safetensors + JSON) and the policies that play;
- `train`: latent and oracle behavioural cloning; `evaluate`: success on held-out levels and Genie Fig. 15.
"""
