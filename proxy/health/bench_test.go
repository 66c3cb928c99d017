package health_test

const serverEnv = "VIGIL_HEALTH_BENCH_SERVER"

func serveBench() int { return 0 }
