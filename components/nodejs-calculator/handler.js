// nodejs-calculator: the four operations of arithmetic on two numbers.
//
// params: { "operation": "add" | "subtract" | "multiply" | "divide", "a": n, "b": n }
// result: { "result": n }
const operations = {
  add: (a, b) => a + b,
  subtract: (a, b) => a - b,
  multiply: (a, b) => a * b,
  divide: (a, b) => {
    if (b === 0) throw new RangeError('division by zero');
    return a / b;
  },
};

export default function calculator(event) {
  const { operation, a, b } = event.params;
  const apply = operations[operation];
  if (!apply) {
    throw new TypeError(
      `unknown operation ${JSON.stringify(operation)}; expected one of ${Object.keys(operations).join(', ')}`,
    );
  }
  if (typeof a !== 'number' || typeof b !== 'number') {
    throw new TypeError('a and b must be numbers');
  }
  return { result: apply(a, b) };
}
