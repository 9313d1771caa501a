# Benchmarks of the Qwen3-VL study, as lmms-eval 0.7.3 names them (checked by tests/test_examples.py).
# Math: MathVista, MathVerse (vision-only version), MATH-Vision, We-Math, DynaMath, LogicVista.
QWEN3_MATH_TASKS=mathvista_testmini,mathverse_testmini_vision_only,mathvision_testmini,wemath_testmini_reasoning,dynamath_reasoning,logicvista_reasoning
# General: ScienceQA (images), ChartQA, RealWorldQA, AI2D, MMStar, MMMU, MMBench.
QWEN3_GENERAL_TASKS=scienceqa_img,chartqa,realworldqa,ai2d,mmstar,mmmu_val,mmbench_en_dev
# Pruning budgets as fractions of decoder depth (10-50%); 0 = the unpruned model.
QWEN3_BUDGETS=0,0.1,0.2,0.3,0.4,0.5
# Criteria: one-shot (one calibration pass per domain) and greedy (re-calibrating).
QWEN3_ONESHOT=math,nonmath,mixed,mixed_rank,shortgpt,angular,last,random
QWEN3_GREEDY=iter_math,iter_nonmath,iter_mixed,func_math,func_nonmath,func_mixed
