"""The paper's quantities: weight statistics, the closed-form ablation (Eq. 4-8), its kernel, the sweep, the rules."""
