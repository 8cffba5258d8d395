-- Fleet scale (issue 9): the control plane finds instances that fell silent (their
-- replica died with their streams) by a range over last_seen_ms since its previous
-- look, so that range must not be a scan of every sidecar row.
CREATE INDEX sidecars_last_seen ON sidecars (last_seen_ms);
