"""Built-in score estimators: paas (SJC, the default), sds (DreamFusion), ism (LucidDreamer)."""
