"""Fix and verify: remove a Clever-Hans strategy the analysis found from the model (Class Artifact Compensation,
ClArC), and measure that it is gone. `cav` learns the artifact's direction in a layer's activations, `clarc` corrects
the model along it."""
