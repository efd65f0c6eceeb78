// Node's mysql2 reads a MariaDB JSON column as an object when the server sends extended type
// metadata. Prints, for the table it creates, the type the driver gave the JSON column.
// Usage: node mysql2_json.js <port> <user> <password> <database> <table>
const path = require('path');
const mysql = require(path.join(process.env.RWPROXY_NPM || '', 'node_modules', 'mysql2/promise'));

async function main() {
  const [port, user, password, database, table] = process.argv.slice(2);
  const conn = await mysql.createConnection({ host: '127.0.0.1', port: Number(port), user, password, database });
  await conn.query(`CREATE TABLE IF NOT EXISTS ${table} (id INT PRIMARY KEY, j JSON)`);
  await conn.query(`REPLACE INTO ${table} VALUES (1, '{"a": [1, 2]}')`);
  const [rows] = await conn.query(`SELECT j FROM ${table} WHERE id = 1 /* rwproxy:primary */`);
  const j = rows[0].j;
  console.log(typeof j, JSON.stringify(j));
  await conn.end();
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
