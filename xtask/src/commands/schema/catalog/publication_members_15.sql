'tables ' || (SELECT pg_catalog.string_agg(t.entry, ', ' ORDER BY t.entry) FROM (
    SELECT pr.prrelid::pg_catalog.regclass::text
           || coalesce(' (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                                FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::pg_catalog.int2[])) || ')', '')
           || coalesce(' WHERE (' || pg_catalog.pg_get_expr(pr.prqual, pr.prrelid) || ')', '') AS entry
    FROM pg_catalog.pg_publication_rel pr WHERE pr.prpubid = p.oid) t),
'schemas ' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(n.nspname), ', ' ORDER BY n.nspname)
               FROM pg_catalog.pg_publication_namespace pn JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
               WHERE pn.pnpubid = p.oid)
