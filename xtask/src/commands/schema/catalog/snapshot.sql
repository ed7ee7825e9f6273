-- The catalog read of schema drift (see catalog.rs): every object of the schema as (kind, name) and its
-- definition. $1 is the migrations table's oid (or NULL); the names in braces are filled in for the
-- server's version by snapshot_query.
WITH ns AS (
    SELECT oid, nspname, nspowner, nspacl FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
), members AS (
    SELECT classid, objid FROM pg_catalog.pg_depend
    WHERE deptype = 'e'
       OR deptype = 'i' AND classid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_cast'::pg_catalog.regclass)
), excluded AS (
    SELECT c.oid FROM pg_catalog.pg_class c
    WHERE c.oid = $1
       OR c.relname IN ('_prestart_environment', '_prestart_releases')
          AND (c.relnamespace = (SELECT p.oid FROM pg_catalog.pg_namespace p WHERE p.nspname = 'public')
               OR c.relnamespace = (SELECT m.relnamespace FROM pg_catalog.pg_class m WHERE m.oid = $1))
), roles AS (
    SELECT r.oid, CASE WHEN r.oid = (SELECT m.relowner FROM pg_catalog.pg_class m WHERE m.oid = $1) THEN '<migrator>'
                       ELSE pg_catalog.quote_ident(r.rolname) END AS token
    FROM pg_catalog.pg_roles r
), rel AS (
    SELECT c.oid, c.relkind, c.relowner, c.relacl, c.reloptions, c.relpersistence, c.reltype,
           pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS qname,
           CASE WHEN c.relkind IN ('r', 'p') THEN 'table' WHEN c.relkind = 'v' THEN 'view' WHEN c.relkind = 'm' THEN 'materialized view'
                WHEN c.relkind = 'S' THEN 'sequence' WHEN c.relkind IN ('i', 'I') THEN 'index' WHEN c.relkind = 'c' THEN 'composite type'
                ELSE 'relation' END AS kind
    FROM pg_catalog.pg_class c JOIN ns n ON n.oid = c.relnamespace
    WHERE c.oid NOT IN (SELECT oid FROM excluded)
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indexrelid = c.oid AND i.indrelid IN (SELECT oid FROM excluded))
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
                      AND d.refobjid IN (SELECT oid FROM excluded))
      AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.objid = c.oid)
), defs (classid, objid, objsubid, kind, name, definition, parent_kind, parent_name, owner, acl, acltype, shown) AS (
SELECT 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid, e.oid, 0, 'extension', e.extname::text,
       'schema ' || pg_catalog.quote_ident(n.nspname), NULL, NULL, NULL::pg_catalog.oid, NULL::pg_catalog.aclitem[], NULL::"char", false
FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'
UNION ALL
-- The owner of `public` comes with the database, not with a migration.
SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass, oid, 0, 'schema', pg_catalog.quote_ident(nspname), '', NULL, NULL,
       nspowner, nspacl, 'n', nspname <> 'public'
FROM ns
UNION ALL
SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, 0, 'table', r.qname,
       pg_catalog.concat_ws(' ',
           CASE c.relpersistence WHEN 'u' THEN 'unlogged' END,
           CASE WHEN c.relkind = 'p' THEN 'partitioned by ' || pg_catalog.pg_get_partkeydef(c.oid) END,
           CASE WHEN c.relispartition THEN 'partition of '
               || (SELECT pg_catalog.string_agg(i.inhparent::pg_catalog.regclass::text, ', ') FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
               || ' ' || pg_catalog.pg_get_expr(c.relpartbound, c.oid)
           ELSE 'inherits ' || (SELECT pg_catalog.string_agg(i.inhparent::pg_catalog.regclass::text, ', ' ORDER BY i.inhseqno)
                                FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) END,
           'of type ' || CASE WHEN c.reloftype <> 0 THEN pg_catalog.format_type(c.reloftype, NULL) END,
           'using ' || (SELECT a.amname FROM pg_catalog.pg_am a WHERE a.oid = c.relam AND a.amname <> 'heap'),
           'tablespace ' || (SELECT pg_catalog.quote_ident(t.spcname) FROM pg_catalog.pg_tablespace t WHERE t.oid = c.reltablespace),
           'with (' || (SELECT pg_catalog.string_agg(o, ', ' ORDER BY o) FROM pg_catalog.unnest(c.reloptions) o) || ')',
           'with toast (' || (SELECT pg_catalog.string_agg(o, ', ' ORDER BY o) FROM pg_catalog.pg_class t, pg_catalog.unnest(t.reloptions) o
                              WHERE t.oid = c.reltoastrelid) || ')',
           CASE WHEN c.relrowsecurity THEN 'row level security' END,
           CASE WHEN c.relforcerowsecurity THEN 'forced row level security' END,
           CASE c.relreplident WHEN 'n' THEN 'replica identity nothing' WHEN 'f' THEN 'replica identity full'
               WHEN 'i' THEN 'replica identity using index '
                   || (SELECT pg_catalog.quote_ident(x.relname) FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid
                       WHERE i.indrelid = c.oid AND i.indisreplident) END),
       NULL, NULL, c.relowner, c.relacl, 'r', true
FROM rel r JOIN pg_catalog.pg_class c ON c.oid = r.oid WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, r.oid, a.attnum, 'column', r.qname || '.' || pg_catalog.quote_ident(a.attname),
       pg_catalog.format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attcollation <> t.typcollation THEN ' COLLATE ' || a.attcollation::pg_catalog.regcollation::text ELSE '' END
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END
       || CASE WHEN a.attgenerated = 's' THEN coalesce(' GENERATED ALWAYS AS (' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) || ') STORED', '')
               ELSE coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') END
       || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY' WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
       || CASE WHEN a.attstorage <> t.typstorage THEN ' STORAGE ' || a.attstorage::text ELSE '' END
       {compression}
       || CASE WHEN coalesce(a.attstattarget, -1) >= 0 THEN ' STATISTICS ' || a.attstattarget ELSE '' END
       || coalesce(' WITH (' || (SELECT pg_catalog.string_agg(o, ', ' ORDER BY o) FROM pg_catalog.unnest(a.attoptions) o) || ')', ''),
       r.kind, r.qname, c.relowner, a.attacl, 'c', false
FROM rel r JOIN pg_catalog.pg_class c ON c.oid = r.oid
JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, r.oid, 0, 'index', r.qname,
       pg_catalog.pg_get_indexdef(r.oid)
       || coalesce(' TABLESPACE ' || (SELECT pg_catalog.quote_ident(t.spcname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_tablespace t
                                      ON t.oid = c.reltablespace WHERE c.oid = r.oid), '')
       || CASE WHEN i.indisclustered THEN ' (clustered)' ELSE '' END,
       t.kind, t.qname, NULL, NULL, NULL, false
FROM rel r JOIN pg_catalog.pg_index i ON i.indexrelid = r.oid JOIN rel t ON t.oid = i.indrelid WHERE r.relkind IN ('i', 'I')
UNION ALL
-- A foreign key whose triggers were disabled (ALTER TABLE ... DISABLE TRIGGER ALL) no longer holds.
SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, con.oid, 0, 'constraint', r.qname || '.' || pg_catalog.quote_ident(con.conname),
       CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgconstraint = con.oid AND t.tgisinternal AND t.tgenabled <> 'O')
            THEN 'triggers disabled: ' ELSE '' END || pg_catalog.pg_get_constraintdef(con.oid),
       r.kind, r.qname, NULL, NULL, NULL, false
FROM pg_catalog.pg_constraint con JOIN rel r ON r.oid = con.conrelid
UNION ALL
-- A sequence OWNED BY a column, or an identity's, is a part of its table; an identity's owner is always its table's.
SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, r.oid, 0, 'sequence', r.qname,
       pg_catalog.format('%s start %s increment %s min %s max %s cache %s%s%s%s', pg_catalog.format_type(s.seqtypid, NULL),
                         s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END,
                         CASE WHEN r.relpersistence = 'u' AND dep.deptype IS DISTINCT FROM 'i' THEN ' unlogged' ELSE '' END,
                         CASE dep.deptype WHEN 'a' THEN ' owned by ' WHEN 'i' THEN ' identity of ' ELSE '' END
                         || coalesce(t.qname || '.' || pg_catalog.quote_ident(a.attname), '')),
       t.kind, t.qname, r.relowner, r.relacl, 's', dep.deptype IS DISTINCT FROM 'i'
FROM rel r JOIN pg_catalog.pg_sequence s ON s.seqrelid = r.oid
LEFT JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.objid = r.oid
     AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.deptype IN ('a', 'i') AND dep.refobjsubid > 0
LEFT JOIN rel t ON t.oid = dep.refobjid
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = dep.refobjid AND a.attnum = dep.refobjsubid
UNION ALL
SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, r.oid, 0, r.kind, r.qname,
       coalesce('WITH (' || (SELECT pg_catalog.string_agg(o, ', ' ORDER BY o) FROM pg_catalog.unnest(r.reloptions) o) || ')', '')
       || pg_catalog.pg_get_viewdef(r.oid),
       NULL, NULL, r.relowner, r.relacl, 'r', true
FROM rel r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, r.reltype, 0, 'composite type', r.qname,
       (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname) || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attcollation <> t.typcollation THEN ' COLLATE ' || a.attcollation::pg_catalog.regcollation::text ELSE '' END,
                ', ' ORDER BY a.attnum)
        FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped),
       NULL, NULL, ty.typowner, ty.typacl, 'T', true
FROM rel r JOIN pg_catalog.pg_type ty ON ty.oid = r.reltype WHERE r.relkind = 'c'
UNION ALL
SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, 0,
       CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname)
       || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       CASE WHEN p.prokind <> 'a' THEN pg_catalog.pg_get_functiondef(p.oid) ELSE
           (SELECT pg_catalog.concat_ws(', ',
                'kind = ' || ag.aggkind::text, 'direct arguments = ' || ag.aggnumdirectargs,
                'sfunc = ' || ag.aggtransfn::pg_catalog.regprocedure::text,
                'stype = ' || pg_catalog.format_type(ag.aggtranstype, NULL),
                'sspace = ' || ag.aggtransspace,
                'finalfunc = ' || CASE WHEN ag.aggfinalfn <> 0 THEN ag.aggfinalfn::pg_catalog.regprocedure::text END,
                'finalfunc_extra = ' || ag.aggfinalextra, 'finalfunc_modify = ' || ag.aggfinalmodify::text,
                'combinefunc = ' || CASE WHEN ag.aggcombinefn <> 0 THEN ag.aggcombinefn::pg_catalog.regprocedure::text END,
                'serialfunc = ' || CASE WHEN ag.aggserialfn <> 0 THEN ag.aggserialfn::pg_catalog.regprocedure::text END,
                'deserialfunc = ' || CASE WHEN ag.aggdeserialfn <> 0 THEN ag.aggdeserialfn::pg_catalog.regprocedure::text END,
                'initcond = ' || pg_catalog.quote_literal(ag.agginitval),
                'msfunc = ' || CASE WHEN ag.aggmtransfn <> 0 THEN ag.aggmtransfn::pg_catalog.regprocedure::text END,
                'minvfunc = ' || CASE WHEN ag.aggminvtransfn <> 0 THEN ag.aggminvtransfn::pg_catalog.regprocedure::text END,
                'mstype = ' || CASE WHEN ag.aggmtranstype <> 0 THEN pg_catalog.format_type(ag.aggmtranstype, NULL) END,
                'mfinalfunc = ' || CASE WHEN ag.aggmfinalfn <> 0 THEN ag.aggmfinalfn::pg_catalog.regprocedure::text END,
                'minitcond = ' || pg_catalog.quote_literal(ag.aggminitval),
                'sortop = ' || CASE WHEN ag.aggsortop <> 0 THEN ag.aggsortop::pg_catalog.regoperator::text END,
                'parallel = ' || p.proparallel::text, 'returns ' || pg_catalog.format_type(p.prorettype, NULL))
            FROM pg_catalog.pg_aggregate ag WHERE ag.aggfnoid = p.oid) END,
       NULL, NULL, p.proowner, p.proacl, 'f', true
FROM pg_catalog.pg_proc p JOIN ns n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p', 'a', 'w')
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, t.oid, 0, 'trigger', r.qname || '.' || pg_catalog.quote_ident(t.tgname),
       CASE t.tgenabled WHEN 'D' THEN 'DISABLED: ' WHEN 'R' THEN 'ENABLE REPLICA: ' WHEN 'A' THEN 'ENABLE ALWAYS: ' ELSE '' END
       || pg_catalog.pg_get_triggerdef(t.oid),
       r.kind, r.qname, NULL, NULL, NULL, false
FROM pg_catalog.pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, w.oid, 0, 'rule', r.qname || '.' || pg_catalog.quote_ident(w.rulename),
       CASE w.ev_enabled WHEN 'D' THEN 'DISABLED: ' WHEN 'R' THEN 'ENABLE REPLICA: ' WHEN 'A' THEN 'ENABLE ALWAYS: ' ELSE '' END
       || pg_catalog.pg_get_ruledef(w.oid),
       r.kind, r.qname, NULL, NULL, NULL, false
FROM pg_catalog.pg_rewrite w JOIN rel r ON r.oid = w.ev_class WHERE w.rulename <> '_RETURN'
UNION ALL
SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, pol.oid, 0, 'policy', r.qname || '.' || pg_catalog.quote_ident(pol.polname),
       pg_catalog.concat_ws(' ',
           CASE WHEN pol.polpermissive THEN 'AS PERMISSIVE' ELSE 'AS RESTRICTIVE' END,
           'FOR ' || CASE pol.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
           'TO ' || (SELECT pg_catalog.string_agg(coalesce(x.token, 'PUBLIC'), ', ' ORDER BY coalesce(x.token, 'PUBLIC'))
                     FROM pg_catalog.unnest(pol.polroles) u(role) LEFT JOIN roles x ON x.oid = u.role),
           'USING (' || pg_catalog.pg_get_expr(pol.polqual, pol.polrelid) || ')',
           'WITH CHECK (' || pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid) || ')'),
       r.kind, r.qname, NULL, NULL, NULL, false
FROM pg_catalog.pg_policy pol JOIN rel r ON r.oid = pol.polrelid
UNION ALL
SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, s.oid, 0, 'statistics',
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.stxname),
       CASE WHEN coalesce(s.stxstattarget, -1) >= 0 THEN 'STATISTICS ' || s.stxstattarget || ': ' ELSE '' END
       || pg_catalog.pg_get_statisticsobjdef(s.oid),
       r.kind, r.qname, s.stxowner, NULL, NULL, true
FROM pg_catalog.pg_statistic_ext s JOIN ns n ON n.oid = s.stxnamespace JOIN rel r ON r.oid = s.stxrelid
UNION ALL
SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid, 0,
       CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' ELSE 'range type' END,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname),
       CASE t.typtype
       WHEN 'e' THEN (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                      FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid)
       WHEN 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod)
           || CASE WHEN t.typcollation <> b.typcollation THEN ' COLLATE ' || t.typcollation::pg_catalog.regcollation::text ELSE '' END
           || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(t.typdefaultbin, 0), '')
           || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
           || coalesce((SELECT pg_catalog.string_agg(' CONSTRAINT ' || pg_catalog.quote_ident(con.conname) || ' '
                                                     || pg_catalog.pg_get_constraintdef(con.oid), '' ORDER BY con.conname)
                        FROM pg_catalog.pg_constraint con WHERE con.contypid = t.oid), '')
       ELSE (SELECT pg_catalog.concat_ws(', ', 'subtype = ' || pg_catalog.format_type(g.rngsubtype, NULL),
                    'subtype_opclass = ' || (SELECT pg_catalog.quote_ident(opn.nspname) || '.' || pg_catalog.quote_ident(oc.opcname)
                                             FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_namespace opn ON opn.oid = oc.opcnamespace
                                             WHERE oc.oid = g.rngsubopc),
                    'collation = ' || CASE WHEN g.rngcollation <> 0 THEN g.rngcollation::pg_catalog.regcollation::text END,
                    'canonical = ' || CASE WHEN g.rngcanonical <> 0 THEN g.rngcanonical::pg_catalog.regprocedure::text END,
                    'subtype_diff = ' || CASE WHEN g.rngsubdiff <> 0 THEN g.rngsubdiff::pg_catalog.regprocedure::text END)
             FROM pg_catalog.pg_range g WHERE g.rngtypid = t.oid) END,
       NULL, NULL, t.typowner, t.typacl, 'T', true
FROM pg_catalog.pg_type t JOIN ns n ON n.oid = t.typnamespace LEFT JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype
WHERE t.typtype IN ('e', 'd', 'r')
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
UNION ALL
SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid, 0, 'operator',
       pg_catalog.quote_ident(n.nspname) || '.' || o.oprname || '('
       || CASE WHEN o.oprleft = 0 THEN 'NONE' ELSE pg_catalog.format_type(o.oprleft, NULL) END || ', '
       || CASE WHEN o.oprright = 0 THEN 'NONE' ELSE pg_catalog.format_type(o.oprright, NULL) END || ')',
       pg_catalog.concat_ws(', ', 'function = ' || o.oprcode::pg_catalog.regprocedure::text,
           'commutator = ' || CASE WHEN o.oprcom <> 0 THEN o.oprcom::pg_catalog.regoperator::text END,
           'negator = ' || CASE WHEN o.oprnegate <> 0 THEN o.oprnegate::pg_catalog.regoperator::text END,
           'restrict = ' || CASE WHEN o.oprrest <> 0 THEN o.oprrest::pg_catalog.regprocedure::text END,
           'join = ' || CASE WHEN o.oprjoin <> 0 THEN o.oprjoin::pg_catalog.regprocedure::text END,
           CASE WHEN o.oprcanhash THEN 'hashes' END, CASE WHEN o.oprcanmerge THEN 'merges' END),
       NULL, NULL, o.oprowner, NULL, NULL, true
FROM pg_catalog.pg_operator o JOIN ns n ON n.oid = o.oprnamespace
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND m.objid = o.oid)
UNION ALL
SELECT 'pg_catalog.pg_cast'::pg_catalog.regclass, c.oid, 0, 'cast',
       '(' || pg_catalog.format_type(c.castsource, NULL) || ' AS ' || pg_catalog.format_type(c.casttarget, NULL) || ')',
       CASE c.castmethod WHEN 'f' THEN 'WITH FUNCTION ' || c.castfunc::pg_catalog.regprocedure::text WHEN 'i' THEN 'WITH INOUT'
           ELSE 'WITHOUT FUNCTION' END
       || CASE c.castcontext WHEN 'e' THEN '' WHEN 'a' THEN ' AS ASSIGNMENT' ELSE ' AS IMPLICIT' END,
       NULL, NULL, NULL, NULL, NULL, false
FROM pg_catalog.pg_cast c
WHERE c.oid >= 16384
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, c.oid, 0, 'collation',
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.collname),
       pg_catalog.concat_ws(', ', 'provider = ' || c.collprovider::text, 'deterministic = ' || c.collisdeterministic,
           'lc_collate = ' || c.collcollate::text, 'lc_ctype = ' || c.collctype::text {collation_locale}),
       NULL, NULL, c.collowner, NULL, NULL, true
FROM pg_catalog.pg_collation c JOIN ns n ON n.oid = c.collnamespace
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_collation'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, d.oid, 0, 'text search dictionary',
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(d.dictname),
       pg_catalog.concat_ws(', ', 'template = ' || (SELECT pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.tmplname)
                                                   FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.tmplnamespace
                                                   WHERE t.oid = d.dicttemplate), d.dictinitoption),
       NULL, NULL, d.dictowner, NULL, NULL, true
FROM pg_catalog.pg_ts_dict d JOIN ns n ON n.oid = d.dictnamespace
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_dict'::pg_catalog.regclass AND m.objid = d.oid)
UNION ALL
SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, c.oid, 0, 'text search configuration',
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.cfgname),
       'parser = ' || (SELECT pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.prsname)
                       FROM pg_catalog.pg_ts_parser p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.prsnamespace WHERE p.oid = c.cfgparser)
       || coalesce('; ' || (SELECT pg_catalog.string_agg(tt.alias || ' = ' || m.dicts, ', ' ORDER BY tt.alias)
                            FROM pg_catalog.ts_token_type(c.cfgparser) tt
                            JOIN (SELECT maptokentype, pg_catalog.string_agg(mapdict::pg_catalog.regdictionary::text, ', ' ORDER BY mapseqno) AS dicts
                                  FROM pg_catalog.pg_ts_config_map WHERE mapcfg = c.oid GROUP BY maptokentype) m ON m.maptokentype = tt.tokid), ''),
       NULL, NULL, c.cfgowner, NULL, NULL, true
FROM pg_catalog.pg_ts_config c JOIN ns n ON n.oid = c.cfgnamespace
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_config'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 'pg_catalog.pg_publication'::pg_catalog.regclass, p.oid, 0, 'publication', pg_catalog.quote_ident(p.pubname),
       pg_catalog.concat_ws('; ',
           CASE WHEN p.puballtables THEN 'for all tables' END,
           'publish ' || pg_catalog.concat_ws(', ', CASE WHEN p.pubinsert THEN 'insert' END, CASE WHEN p.pubupdate THEN 'update' END,
                                             CASE WHEN p.pubdelete THEN 'delete' END, CASE WHEN p.pubtruncate THEN 'truncate' END),
           CASE WHEN p.pubviaroot THEN 'via partition root' END,
           {publication_members}),
       NULL, NULL, p.pubowner, NULL, NULL, true
FROM pg_catalog.pg_publication p
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_publication'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT 'pg_catalog.pg_event_trigger'::pg_catalog.regclass, e.oid, 0, 'event trigger', pg_catalog.quote_ident(e.evtname),
       CASE e.evtenabled WHEN 'D' THEN 'DISABLED: ' WHEN 'R' THEN 'ENABLE REPLICA: ' WHEN 'A' THEN 'ENABLE ALWAYS: ' ELSE '' END
       || 'ON ' || e.evtevent
       || coalesce(' WHEN TAG IN (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(g), ', ' ORDER BY g)
                                        FROM pg_catalog.unnest(e.evttags) g) || ')', '')
       || ' EXECUTE FUNCTION ' || e.evtfoid::pg_catalog.regprocedure::text,
       NULL, NULL, e.evtowner, NULL, NULL, true
FROM pg_catalog.pg_event_trigger e
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass AND m.objid = e.oid)
), acls (kind, name, owner, acl, acltype) AS (
    SELECT kind, name, owner, acl, acltype FROM defs WHERE acl IS NOT NULL
    UNION ALL
    SELECT 'default privileges',
           'for ' || coalesce(x.token, d.defaclrole::text) || ' on '
           || CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types'
                  WHEN 'n' THEN 'schemas' ELSE d.defaclobjtype::text END
           || CASE WHEN d.defaclnamespace = 0 THEN '' ELSE ' in ' || pg_catalog.quote_ident(n.nspname) END,
           d.defaclrole, d.defaclacl, NULL
    FROM pg_catalog.pg_default_acl d LEFT JOIN roles x ON x.oid = d.defaclrole
    LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
), acl_text (kind, name, given, text) AS (
    SELECT a.kind, a.name, v.given,
           coalesce((SELECT pg_catalog.string_agg(g.entry, '; ' ORDER BY g.entry) FROM (
               SELECT CASE WHEN e.grantee = a.owner THEN '<owner>' WHEN e.grantee = 0 THEN 'PUBLIC' ELSE coalesce(x.token, e.grantee::text) END
                      || ': ' || pg_catalog.string_agg(e.privilege_type || CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END,
                                                       ', ' ORDER BY e.privilege_type)
                      || CASE WHEN e.grantor = a.owner THEN '' ELSE ' (granted by ' || coalesce(y.token, e.grantor::text) || ')' END AS entry
               FROM pg_catalog.aclexplode(v.acl) e LEFT JOIN roles x ON x.oid = e.grantee LEFT JOIN roles y ON y.oid = e.grantor
               GROUP BY e.grantee, e.grantor, x.token, y.token) g), 'none')
    FROM acls a CROSS JOIN LATERAL (VALUES (true, a.acl), (false, CASE WHEN a.acltype IS NOT NULL THEN pg_catalog.acldefault(a.acltype, a.owner) END)) v(given, acl)
    WHERE v.given OR a.acltype IS NOT NULL
)
SELECT kind, name, definition, parent_kind, parent_name FROM defs
UNION ALL
SELECT 'owner', d.kind || ' ' || d.name, x.token, d.kind, d.name FROM defs d JOIN roles x ON x.oid = d.owner WHERE d.shown
UNION ALL
SELECT 'comment', d.kind || ' ' || d.name, c.description, d.kind, d.name
FROM defs d JOIN pg_catalog.pg_description c ON c.classoid = d.classid AND c.objoid = d.objid AND c.objsubid = d.objsubid
UNION ALL
SELECT 'default privileges', t.name, t.text, NULL, NULL FROM acl_text t WHERE t.kind = 'default privileges'
UNION ALL
SELECT 'grants', t.kind || ' ' || t.name, t.text, t.kind, t.name
FROM acl_text t JOIN acl_text dflt ON dflt.kind = t.kind AND dflt.name = t.name AND NOT dflt.given
WHERE t.given AND t.text <> dflt.text
