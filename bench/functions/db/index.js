// The db-connections scenario's function: a module-level PostgreSQL pool (the usual way a
// Lambda function keeps connections across calls) and one query per call. Each instance of
// the function opens its own pool, so the number of instances decides how many
// connections the database server has to carry.
const { Pool } = require('pg');

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 10 });

module.exports.handler = async () => {
  const { rows } = await pool.query('SELECT pg_backend_pid() AS pid, pg_sleep(0.2)');
  return { statusCode: 200, body: `${process.pid},${rows[0].pid}\n` };
};
