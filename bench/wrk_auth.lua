-- wrk script: send the benchmark user's credentials with every request.
-- BENCH_TOKEN and BENCH_USER come from the environment (bench/run.py sets them).
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["New-Api-User"] = os.getenv("BENCH_USER")
