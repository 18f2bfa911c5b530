"""`regcred doctor`: reads what it needs from the API and hands it to the core's rules
(`core/doctor/`)."""
