"""Acting inside the world model (issue 28): what a world model is for, after Ha & Schmidhuber (2018), Dreamer and
MuZero.

- `heads`: reward and continuation heads on frame tokens, trained on a recording's rewards and episode ends;
- `plan`: receding-horizon planning over latent actions in token-only rollouts, scored by the heads, played in the
  real game through the latent → real map (`genie plan`);
- `dream`: a linear controller on the heads' pooled features, trained by CMA-ES on world-model rollouts alone, then
  played in the real game (`genie dream`).
"""
