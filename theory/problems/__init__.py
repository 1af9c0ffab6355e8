"""Scale-invariant problems: analytic ones with closed forms (:mod:`.analytic`) and normalized
networks on real data (:mod:`.nets`)."""
