print("es-perf")
