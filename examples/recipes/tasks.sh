# Benchmarks of the study, as lmms-eval 0.7.3 names them (checked by tests/test_examples.py).
MATH_TASKS=mathvista_testmini,mathverse_testmini,mathvision_testmini,wemath_testmini_reasoning,dynamath_reasoning,logicvista_reasoning
GENERAL_TASKS=mmmu_val,mmbench_en_dev,scienceqa_img,chartqa,realworldqa,ai2d
