"""A run's evaluations: the chosen metrics of EMA samples (scores), the fast and paper protocols (protocol), and
   reference statistics in files (reference_stats). [I/O]"""
